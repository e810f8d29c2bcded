"""The demos' server: ``grft serve`` in its embedded default (SQLite, local artifacts, a broker-less
worker) under a folder of the demo's, stopped with everything it started however the demo ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from domain.processes import die_with_parent
from grft_client import Client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(client: Client, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"grft serve exited with status {server.returncode}")
        if client.ready():
            return
        time.sleep(0.5)
    raise SystemExit("grft serve did not become ready in time")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, which stops its worker (in a session of its own) before it exits; SIGKILL
    its process group after 60 s (the worker then stops itself: it watches its parent)."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it if the demo dies, even by SIGKILL (Linux)."""
    die_with_parent()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # runs the ``finally`` that stops the server


@contextmanager
def embedded_server(out_dir: Path, *, ready_timeout: float = 180.0) -> Iterator[str]:
    """Start ``grft serve --no-auth`` on a free loopback port with its state under ``out_dir/home``,
    wait until it is ready and yield its base URL; stop it (and its worker) on the way out."""
    port = _free_port()
    env = {
        **os.environ,
        "GRFT_HOME": str(out_dir / "home"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    for var in ("GRFT_DATABASE_URL", "GRFT_BROKER_URL", "GRFT_ARTIFACT_URL"):
        env.pop(var, None)  # the embedded default
    log = (out_dir / "server.log").open("wb")
    # The server has a session of its own (a terminal's Ctrl-C reaches the demo, which stops it); a
    # SIGTERM of the demo (``kill``, a CI timeout) also goes through the ``finally`` below.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-auth"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent,  # the demo has no threads yet: preexec_fn is safe here
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # --no-auth on loopback: no key (an explicit "" keeps GRFT_API_KEY and the config file out of it).
        with Client(url, api_key="", timeout=120) as client:
            _wait_ready(client, server, ready_timeout)
        yield url
    finally:
        _stop(server)
        log.close()
