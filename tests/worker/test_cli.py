"""The service commands of ``grft``: db upgrade, keys create, serve's refusals and its embedded worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.cli import is_loopback, lock_home, main, worker_command, worker_env
from domain.auth.keys import authenticate
from domain.db import get_engine, session_scope
from domain.settings import Settings, get_settings
from tests.conftest import call_main
from tests.worker.conftest import REDIS_URL


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An embedded-mode environment (nothing configured but GRFT_HOME)."""
    for name in [n for n in os.environ if n.startswith("GRFT_") and n != "GRFT_MODEL_DIR"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GRFT_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_engine(get_settings().database_url).dispose()
    get_settings.cache_clear()


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``grft`` in-process and return (exit status, stdout, stderr)."""
    return call_main(main, capsys, *args)


class TestKeys:
    def test_create_prints_a_working_key_last(self, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert call(capsys, "db", "upgrade")[0] == 0
        assert (home / "grft.db").is_file()
        code, out, _ = call(capsys, "keys", "create", "--tenant", "acme")
        assert code == 0
        key = out.strip().splitlines()[-1]
        assert key.startswith("grft-")
        with session_scope(get_settings().database_url) as session:
            assert authenticate(session, f"Bearer {key}").name == "acme"

    def test_create_before_the_schema_explains(self, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        home.mkdir(parents=True)
        code, _, err = call(capsys, "keys", "create", "--tenant", "acme")
        assert code == 2
        assert "grft db upgrade" in err


class TestServe:
    @pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com"])
    def test_no_auth_only_on_loopback(
        self, home: Path, capsys: pytest.CaptureFixture[str], host: str
    ) -> None:
        code, _, err = call(capsys, "serve", "--host", host, "--no-auth")
        assert code == 2
        assert "loopback" in err
        assert not (home / "grft.db").exists()  # refused before touching anything

    def test_loopback_hosts(self) -> None:
        assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost"))
        assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.1", "example.com"))


class TestWorkerCommand:
    def test_embedded_worker_skips_broadcasts(self, tmp_path: Path) -> None:
        command = worker_command(Settings(home=tmp_path, queue="gpu"))
        assert command[:6] == [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
        assert {"-P", "solo", "-Q", "gpu", "--without-mingle", "--without-gossip"} <= set(command)

    def test_control_worker_runs_beat_on_its_own_queue(self, tmp_path: Path) -> None:
        settings = Settings(home=tmp_path, queue="gpu", broker_url="redis://127.0.0.1:6379/14")
        command = worker_command(settings, control=True)
        assert command[command.index("-Q") + 1] == "gpu.control"
        assert "--beat" in command
        assert "--without-mingle" not in command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_with(marker: str) -> list[int]:
    """The processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _processes_of(folder: Path) -> list[int]:
    """The live processes (not zombies) whose command line or environment mentions ``folder``."""
    marker, found = str(folder).encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if marker in (entry / "cmdline").read_bytes() or marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue  # gone, or another user's
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _wait_gone(folder: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _processes_of(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _kill_all_of(folder: Path) -> None:
    """Clean-up after a failure: SIGKILL what this test started (the processes that name its folder)."""
    for pid in _processes_of(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _serve_env(tmp_path: Path, model_store: Path, queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRFT_")}
    env.update(GRFT_HOME=str(tmp_path / "home"), GRFT_QUEUE=queue, GRFT_MODEL_DIR=str(model_store))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _start_serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # A session of its own, as ``make demo`` starts it: signals reach it only from this test.
        return subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--no-auth", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_serving(serve: subprocess.Popen[bytes], port: int, queue: str, log: Path) -> int:
    """Wait for /healthz and for the embedded worker; returns the worker's pid."""
    deadline, up = time.monotonic() + 120, False
    while time.monotonic() < deadline and not up:
        assert serve.poll() is None, log.read_text()
        try:
            up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            time.sleep(0.5)
    assert up, log.read_text()
    while time.monotonic() < deadline and not _processes_with(f"-Q\0{queue}\0"):
        time.sleep(0.5)
    workers = _processes_with(f"-Q\0{queue}\0")
    assert len(workers) == 1, log.read_text()
    return workers[0]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_runs_the_embedded_worker_and_stops_it(
    tmp_path: Path, model_store: Path, stop: signal.Signals
) -> None:
    queue = f"serve-{uuid.uuid4().hex[:8]}"
    env = _serve_env(tmp_path, model_store, queue)
    home = tmp_path / "home"
    port = _free_port()
    log = tmp_path / "serve.log"
    serve = _start_serve(env, port, log)
    try:
        worker = _wait_serving(serve, port, queue, log)
        assert "auth is off" in log.read_text()
        assert (home / "grft.db").is_file()
        # The command's choices reach the app and the worker by argument, not through os.environ.
        assert httpx.get(f"http://127.0.0.1:{port}/v1/files", timeout=10).status_code == 200
        worker_env = _environ(worker)
        assert worker_env["GRFT_AUTH_DISABLED"] == "true"
        assert worker_env["GRFT_PORT"] == str(port)
        assert worker_env["GRFT_QUEUE"] == queue
        assert worker_env["GRFT_PARENT_PID"] == str(serve.pid)
        # A second serve on the same home refuses to start a second worker.
        second = subprocess.run(
            [sys.executable, "-m", "api.cli", "serve", "--no-auth", "--port", str(_free_port())],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr.decode()
        assert f"pid {serve.pid}" in second.stderr.decode()
        assert _processes_with(f"-Q\0{queue}\0") == [worker]

        serve.send_signal(stop)
        serve.wait(60)
        assert serve.returncode == 0, log.read_text()
        assert _wait_gone(home, 10) == [], log.read_text()
        assert _processes_with(f"-Q\0{queue}\0") == []
    finally:
        serve.kill()
        serve.wait()
        _kill_all_of(home)


@pytest.mark.slow
def test_a_killed_serve_leaves_no_worker_behind(tmp_path: Path, model_store: Path) -> None:
    queue = f"serve-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    port = _free_port()
    log = tmp_path / "serve.log"
    serve = _start_serve(_serve_env(tmp_path, model_store, queue), port, log)
    try:
        _wait_serving(serve, port, queue, log)
        serve.kill()  # no clean-up can run: the worker notices its parent is gone
        serve.wait()
        assert _wait_gone(home, 30) == [], log.read_text()
        lock_home(Settings(home=home)).close()  # the home is free again
    finally:
        serve.kill()
        serve.wait()
        _kill_all_of(home)


class TestControlWorker:
    def test_starts_beat_on_a_fresh_machine(self, tmp_path: Path, database_url: str) -> None:
        """Nothing exists under HOME: the control worker creates GRFT_HOME before its beat writes there."""
        fresh = tmp_path / "fresh-user"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRFT_")}
        env.update(
            HOME=str(fresh),
            GRFT_DATABASE_URL=database_url,
            GRFT_BROKER_URL=REDIS_URL,
            GRFT_QUEUE=f"control-{uuid.uuid4().hex[:8]}",
            OMP_NUM_THREADS="1",
        )
        home = fresh / ".local" / "share" / "grft"
        log = tmp_path / "control.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "worker", "--control"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not list(home.glob("celerybeat-schedule*")):
                assert worker.poll() is None, log.read_text()
                time.sleep(0.5)
            assert list(home.glob("celerybeat-schedule*")), log.read_text()
            assert (home / "work").is_dir()
            time.sleep(2)  # beat opened its schedule and is running
            assert worker.poll() is None, log.read_text()
            text = log.read_text()
            assert "FileNotFoundError" not in text, text
            assert "Traceback" not in text, text
            worker.terminate()
            worker.wait(60)
            assert _wait_gone(fresh, 10) == [], log.read_text()
        finally:
            worker.kill()
            worker.wait()
            _kill_all_of(fresh)


class TestWorkerEnv:
    def test_the_environment_rebuilds_the_settings(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settings = Settings(
            home=tmp_path / "home",
            auth_disabled=True,
            port=8123,
            queue="q1",
            dataset_roots=[tmp_path / "a", tmp_path / "b"],
            heartbeat_seconds=0.25,
        )
        env = worker_env(settings, base={"PATH": "/bin", "GRFT_STALE": "x", "GRFT_PORT": "1"})
        assert env["PATH"] == "/bin"
        assert "GRFT_STALE" not in env
        for name in [n for n in os.environ if n.startswith("GRFT_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert Settings().model_dump() == settings.model_dump()
