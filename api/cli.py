"""The ``grft`` command: the library's commands plus the service's ``serve``, ``worker``, ``db``, ``keys``.

``grft serve`` with no configuration is the embedded mode: SQLite and artifacts under ``GRFT_HOME``,
and a worker subprocess fed through the filesystem broker. The worker is started by module name
(``celery -A worker.celery_app``): the API never imports the worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from domain.queue import control_queue
from domain.settings import Settings, get_settings
from grft_core.cli import app, err_console
from grft_core.cli import main as _core_main

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from domain.auth.keys import KeyInfo

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
# How long a stopping worker may finish its current step before it is killed; the job it held is
# re-queued by the reconciler and resumes from its last checkpoint.
WORKER_STOP_TIMEOUT_S = 10.0
# The parent's pid, handed to a worker it starts: the worker stops when that process is gone
# (read by ``worker.housekeeping``; the API never imports the worker, so the name is repeated).
PARENT_PID_ENV = "GRFT_PARENT_PID"

db_app = typer.Typer(no_args_is_help=True, help="The service database.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")


def _fail(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


# --- building blocks (also used by tests) -----------------------------------------------------------


def upgrade_database(settings: Settings) -> None:
    """``alembic upgrade head`` on ``settings.database_url`` (creating the SQLite folder if needed)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = settings.database_url
    command.upgrade(config, "head")


def worker_command(settings: Settings, *, control: bool = False) -> list[str]:
    """The Celery worker command line: one solo process (one per GPU), prefetching one job."""
    queue = control_queue(settings) if control else settings.queue
    command = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-P", "solo", "-c", "1", "-Q", queue, "--loglevel", "INFO",
        "--hostname", f"grft-{queue}-{os.getpid()}@%h",
    ]  # fmt: skip
    if settings.embedded:
        # The filesystem transport has no broadcast worth the polling: no gossip, mingle or heartbeats.
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if control:
        # The control worker also runs beat, which sends grft.reconcile every reconcile_seconds.
        command += ["--beat", "--schedule", str(settings.home / "celerybeat-schedule")]
    return command


def worker_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process for ``settings``: ``base`` (default: this process's
    environment) without its ``GRFT_*`` variables, plus one ``GRFT_<FIELD>`` per setting."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("GRFT_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | dict):
            text = json.dumps(value)  # pydantic-settings reads complex fields as JSON
        else:
            text = str(value)
        env[f"GRFT_{name.upper()}"] = text
    return env


def start_worker(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start a worker in its own session (a terminal's Ctrl-C reaches ``serve``, which stops it) that
    stops itself if this process dies (``PARENT_PID_ENV``, read by ``worker.housekeeping``)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    child_env = dict(worker_env(settings) if env is None else env)
    child_env[PARENT_PID_ENV] = str(os.getpid())
    return subprocess.Popen(
        worker_command(settings),
        env=child_env,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=True,
        pass_fds=pass_fds,
    )


def stop_worker(process: subprocess.Popen[bytes], timeout: float = WORKER_STOP_TIMEOUT_S) -> int:
    """Ask the worker to stop (warm shutdown), then kill it if it is still training after ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class WorkerSupervisor(threading.Thread):
    """Keeps the embedded worker running: restarts it if it exits (out of memory, a crash).

    ``pass_fds`` go to every worker it starts: the GRFT_HOME lock, so that the home stays locked
    for as long as any worker of this ``serve`` lives, even one outliving it for a few seconds."""

    def __init__(self, settings: Settings, interval: float = 5.0, pass_fds: tuple[int, ...] = ()) -> None:
        super().__init__(name="grft-worker-supervisor", daemon=True)
        self.settings, self.interval, self.pass_fds = settings, interval, pass_fds
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.process = start_worker(settings, pass_fds=pass_fds)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            with self.lock:
                if self.stopping.is_set() or self.process.poll() is None:
                    continue
                log.warning("the worker exited with status %s; restarting it", self.process.returncode)
                self.process = start_worker(self.settings, pass_fds=self.pass_fds)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            stop_worker(self.process)


class HomeInUse(Exception):
    """Another ``grft serve`` (or its worker) holds this ``GRFT_HOME``."""


def lock_home(settings: Settings) -> IO[str]:
    """Lock ``GRFT_HOME/serve.lock`` (``flock``, released when every holder of it has exited) so that
    one home never gets two embedded workers; returns the open lock file. Raises :class:`HomeInUse`."""
    settings.home.mkdir(parents=True, exist_ok=True)
    file = (settings.home / "serve.lock").open("a+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        owner = file.read().strip() or "?"
        file.close()
        raise HomeInUse(
            f"{settings.home} is in use by another grft serve (pid {owner}) or its worker, which is "
            "still stopping; stop it, or give this one its own GRFT_HOME"
        ) from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    return file


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived before the server was serving."""


class _StopSignals:
    """``serve``'s SIGTERM and SIGINT handler, so that the worker is stopped whatever the signal hits.

    While uvicorn serves, its own handlers take the signals; after its graceful shutdown it restores
    these and raises the signal again, which lands here and is only noted, so ``serve``'s ``finally``
    (stopping the worker) still runs instead of the default action killing the process. Before the
    server exists a signal aborts the start-up; during the clean-up it is noted and ignored."""

    def __init__(self) -> None:
        self.server: Any = None  # the uvicorn server, once it is about to serve
        self.stopping = False
        self.received: list[int] = []
        self.previous = {sig: signal.signal(sig, self) for sig in (signal.SIGTERM, signal.SIGINT)}

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.server is not None:
            # uvicorn re-raising it after its shutdown (harmless), or one just before it took over
            self.server.should_exit = True
        elif not self.stopping:
            self.stopping = True
            raise _Stopped(signum)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- commands ---------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default GRFT_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default GRFT_PORT, 8000).")] = None,
    auth: Annotated[
        bool | None,
        typer.Option("--auth/--no-auth", help="Require API keys; --no-auth only on a loopback address."),
    ] = None,
) -> None:
    """Run the API (and, in embedded mode, a worker): migrate the database first."""
    import uvicorn

    from api.main import create_app

    configured = get_settings()
    host = host or configured.host
    port = port or configured.port
    auth = (not configured.auth_disabled) if auth is None else auth
    if not auth and not is_loopback(host):
        raise _fail(f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1), not {host!r}")
    # This command's choices over the environment's; the app and the worker get them by argument.
    settings = Settings(host=host, port=port, auth_disabled=not auth)
    if not auth:
        err_console.print(f"auth is off: every request acts as the local tenant (bound to {host} only)")
    signals = _StopSignals()
    home_lock: IO[str] | None = None
    supervisor: WorkerSupervisor | None = None
    try:
        if settings.embedded:
            home_lock = lock_home(settings)
        upgrade_database(settings)
        if home_lock is not None:
            supervisor = WorkerSupervisor(settings, pass_fds=(home_lock.fileno(),))
            supervisor.start()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port))
        signals.server = server
        server.run()
    except HomeInUse as exc:
        raise _fail(str(exc)) from None
    except _Stopped:
        pass
    finally:
        signals.stopping = True
        if supervisor is not None:
            supervisor.stop()
        if home_lock is not None:
            home_lock.close()
        signals.restore()
    if signals.received:
        log.info("stopped by signal %s", signals.received[0])


@app.command("worker")
def worker_cmd(
    control: Annotated[
        bool,
        typer.Option(
            help="Optional: also run beat, which sends grft.reconcile on a control queue. Every worker "
            "already reconciles (on start and every GRFT_RECONCILE_SECONDS, under a database lock)."
        ),
    ] = False,
) -> None:
    """Run one Celery worker process (start one per GPU)."""
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)  # beat's schedule and the work folders live there
    command = worker_command(settings, control=control)
    os.execv(command[0], command)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    settings = get_settings()
    upgrade_database(settings)
    typer.echo("database is at the latest schema")


# --- keys: building blocks (settings by argument) and commands (Settings() built once) ---------------

KEY_MAX_DAYS = 3650


@contextlib.contextmanager
def _key_database(settings: Settings) -> Iterator[Session]:
    """A unit of work on the keys; a database without the schema, or a missing key or tenant, ends the
    command with one ``error:`` line."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from domain.db import session_scope
    from domain.errors import NotFound

    try:
        with session_scope(settings.database_url) as session:
            yield session
    except (OperationalError, ProgrammingError) as exc:
        raise _fail(f"cannot use the key table ({exc.orig}); run 'grft db upgrade' first?") from exc
    except NotFound as exc:
        raise _fail(exc.message) from exc


def create_api_key(
    settings: Settings,
    tenant: str,
    *,
    name: str | None = None,
    expires_in_days: int | None = None,
    now: datetime | None = None,
) -> tuple[KeyInfo, str]:
    """A new key for ``tenant`` (created if new): its listing and the key in clear (shown once)."""
    from domain.auth.keys import KeyInfo, issue_key
    from domain.db import utcnow

    now = now or utcnow()
    expires_at = now + timedelta(days=expires_in_days) if expires_in_days is not None else None
    with _key_database(settings) as session:
        row, key = issue_key(session, tenant, name=name, expires_at=expires_at)
        return KeyInfo.of(row, tenant), key


def list_api_keys(settings: Settings, tenant: str | None = None) -> list[KeyInfo]:
    from domain.auth.keys import list_keys

    with _key_database(settings) as session:
        return list_keys(session, tenant)


def revoke_api_key(settings: Settings, key_id: str) -> tuple[KeyInfo, bool]:
    """Revoke a key; returns it and whether this call revoked it (False: it already was)."""
    from domain.auth.keys import revoke_key

    with _key_database(settings) as session:
        return revoke_key(session, key_id)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


def keys_table(keys: list[KeyInfo], now: datetime) -> str:
    """The keys as aligned text columns (times in UTC)."""
    header = ("id", "name", "tenant", "prefix", "created", "expires", "last used", "revoked")
    rows = [header]
    for k in keys:
        expires = _when(k.expires_at)
        if k.status(now) == "expired":
            expires += " (expired)"
        row = (k.id, k.name or "-", k.tenant, k.prefix, _when(k.created_at), expires,
               _when(k.last_used_at), _when(k.revoked_at))  # fmt: skip
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name (created if new).")],
    name: Annotated[str | None, typer.Option(help="What the key is for, shown by 'keys list'.")] = None,
    expires_in_days: Annotated[
        int | None,
        typer.Option(min=1, max=KEY_MAX_DAYS, help="Days until the key stops working (default: never)."),
    ] = None,
) -> None:
    """Create an API key for TENANT; the key is printed once, on the last line."""
    if not 0 < len(tenant) <= 128:
        raise _fail("--tenant takes 1 to 128 characters")
    if name is not None and not 0 < len(name) <= 128:
        raise _fail("--name takes 1 to 128 characters")
    settings = Settings()
    info, key = create_api_key(settings, tenant, name=name, expires_in_days=expires_in_days)
    until = f", valid until {_when(info.expires_at)} UTC" if info.expires_at is not None else ""
    typer.echo(f"created API key {info.id} for tenant {tenant!r}{until}; it is shown only this once:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array (times in ISO 8601, UTC).")] = False,
) -> None:
    """List API keys (never the keys themselves: their first characters, PREFIX)."""
    from domain.db import utcnow

    settings = Settings()
    keys = list_api_keys(settings, tenant)
    now = utcnow()
    if as_json:
        typer.echo(json.dumps([k.to_dict(now) for k in keys], indent=2))
    elif keys:
        typer.echo(keys_table(keys, now))
    else:
        typer.echo("no API keys" + (f" for tenant {tenant!r}" if tenant else ""))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see 'grft keys list').")]) -> None:
    """Revoke an API key: requests with it answer 401 from now on."""
    settings = Settings()
    info, revoked = revoke_api_key(settings, key_id)
    if revoked:
        typer.echo(f"revoked API key {info.id} ({info.prefix}…) of tenant {info.tenant!r}")
    else:
        typer.echo(f"API key {info.id} was already revoked on {_when(info.revoked_at)} UTC")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``grft``)."""
    _core_main(argv)


if __name__ == "__main__":
    main()
