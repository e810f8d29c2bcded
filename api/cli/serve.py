"""``grft serve`` and ``grft worker``: the API, its embedded worker (started, supervised, stopped), the
``GRFT_HOME`` lock that keeps one home to one embedded worker, and the signal handling of ``serve``.

The worker is started by module name (``celery -A worker.celery_app``): the API never imports the worker.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from types import FrameType
from typing import IO, Annotated, Any

import typer

from api.cli.common import fail
from api.cli.db import SchemaNotReady, upgrade_database, wait_for_schema
from domain import logging as log_setup
from domain.queue import control_queue
from domain.settings import Settings, get_settings
from grft_core.cli import app, err_console

log = logging.getLogger(__name__)

# How long a stopping worker may finish its current step before it is killed; the job it held is
# re-queued by the reconciler and resumes from its last checkpoint.
WORKER_STOP_TIMEOUT_S = 10.0
# The parent's pid, handed to a worker it starts: the worker stops when that process is gone
# (read by ``worker.housekeeping``; the API never imports the worker, so the name is repeated).
PARENT_PID_ENV = "GRFT_PARENT_PID"


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
    from uvicorn.config import LOGGING_CONFIG

    from api.main import create_app

    configured = get_settings()
    host = host or configured.host
    port = port or configured.port
    auth = (not configured.auth_disabled) if auth is None else auth
    if not auth and not is_loopback(host):
        raise fail(f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1), not {host!r}")
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
        log_setup.configure(settings.log_format)
        if settings.migrate_on_start:
            upgrade_database(settings)
        else:  # several replicas: the schema is the migrate job's, and this one waits for it
            wait_for_schema(settings, settings.schema_wait_seconds)
        if home_lock is not None:
            supervisor = WorkerSupervisor(settings, pass_fds=(home_lock.fileno(),))
            supervisor.start()
        json_logs = settings.log_format == "json"  # uvicorn's lines then go through the root's handler
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host=host,
                port=port,
                log_config=None if json_logs else LOGGING_CONFIG,
                access_log=not json_logs,  # api.observability writes one line per request instead
            )
        )
        signals.server = server
        server.run()
    except (HomeInUse, SchemaNotReady) as exc:
        raise fail(str(exc)) from None
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
    try:  # workers never migrate: they start once the migrate job (or serve) has
        wait_for_schema(settings, settings.schema_wait_seconds)
    except SchemaNotReady as exc:
        raise fail(str(exc)) from None
    command = worker_command(settings, control=control)
    os.execv(command[0], command)
