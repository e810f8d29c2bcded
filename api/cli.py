"""The ``grft`` command: the library's commands plus the service's ``serve``, ``worker``, ``db``, ``keys``.

``grft serve`` with no configuration is the embedded mode: SQLite and artifacts under ``GRFT_HOME``,
and a worker subprocess fed through the filesystem broker. The worker is started by module name
(``celery -A worker.celery_app``): the API never imports the worker.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Annotated

import typer

from domain.queue import control_queue
from domain.settings import Settings, get_settings
from grft_core.cli import app, err_console
from grft_core.cli import main as _core_main

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
# How long a stopping worker may finish its current step before it is killed; the job it held is
# re-queued by the reconciler and resumes from its last checkpoint.
WORKER_STOP_TIMEOUT_S = 10.0

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


def start_worker(
    settings: Settings, env: dict[str, str] | None = None, stdout: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start a worker in its own session: a terminal's Ctrl-C reaches ``serve``, which stops it."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        worker_command(settings),
        env=env or dict(os.environ),
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=True,
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
    """Keeps the embedded worker running: restarts it if it exits (out of memory, a crash)."""

    def __init__(self, settings: Settings, interval: float = 5.0) -> None:
        super().__init__(name="grft-worker-supervisor", daemon=True)
        self.settings, self.interval = settings, interval
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.process = start_worker(settings)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            with self.lock:
                if self.stopping.is_set() or self.process.poll() is None:
                    continue
                log.warning("the worker exited with status %s; restarting it", self.process.returncode)
                self.process = start_worker(self.settings)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            stop_worker(self.process)


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

    settings = get_settings()
    host = host or settings.host
    port = port or settings.port
    auth = (not settings.auth_disabled) if auth is None else auth
    if not auth and not is_loopback(host):
        raise _fail(f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1), not {host!r}")
    # The app factory reads its settings from the environment: hand it this command's choices.
    os.environ["GRFT_AUTH_DISABLED"] = "false" if auth else "true"
    os.environ["GRFT_HOST"], os.environ["GRFT_PORT"] = host, str(port)
    get_settings.cache_clear()
    settings = get_settings()
    if not auth:
        err_console.print(f"auth is off: every request acts as the local tenant (bound to {host} only)")
    upgrade_database(settings)
    supervisor = None
    if settings.embedded:
        supervisor = WorkerSupervisor(settings)
        supervisor.start()
    try:
        uvicorn.run("api.main:create_app", factory=True, host=host, port=port)
    finally:
        if supervisor is not None:
            supervisor.stop()


@app.command("worker")
def worker_cmd(
    control: Annotated[
        bool, typer.Option(help="Run the reconciler's worker (with beat) instead of a training worker.")
    ] = False,
) -> None:
    """Run one Celery worker process (start one per GPU)."""
    settings = get_settings()
    command = worker_command(settings, control=control)
    os.execv(command[0], command)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    settings = get_settings()
    upgrade_database(settings)
    typer.echo("database is at the latest schema")


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="Tenant name (created if new).")]) -> None:
    """Create an API key for TENANT; the key is printed once, on the last line."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from domain.auth.keys import create_key
    from domain.db import session_scope

    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            key = create_key(session, tenant)
    except (OperationalError, ProgrammingError) as exc:
        raise _fail(f"cannot write the key ({exc.orig}); run 'grft db upgrade' first?") from exc
    typer.echo(f"created an API key for tenant {tenant!r}; it is shown only this once:")
    typer.echo(key)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``grft``)."""
    _core_main(argv)


if __name__ == "__main__":
    main()
