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

from api.cli import is_loopback, main, worker_command
from domain.auth.keys import authenticate
from domain.db import get_engine, session_scope
from domain.settings import Settings, get_settings


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
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


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
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_serve_runs_the_embedded_worker_and_stops_it(tmp_path: Path, model_store: Path) -> None:
    queue = f"serve-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRFT_")}
    env.update(GRFT_HOME=str(tmp_path / "home"), GRFT_QUEUE=queue, GRFT_MODEL_DIR=str(model_store))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--no-auth", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline, up = time.monotonic() + 120, False
        while time.monotonic() < deadline and not up:
            assert serve.poll() is None, log.read_text()
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200
            except httpx.TransportError:
                time.sleep(0.5)
        assert up, log.read_text()
        while time.monotonic() < deadline and not _processes_with(f"-Q\0{queue}\0"):
            time.sleep(0.5)
        assert _processes_with(f"-Q\0{queue}\0"), log.read_text()
        assert "auth is off" in log.read_text()
        assert (tmp_path / "home" / "grft.db").is_file()
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)
    assert serve.returncode == 0, log.read_text()
    assert _processes_with(f"-Q\0{queue}\0") == []
