"""``GRFT_LOG_FORMAT=json`` in real processes: ``grft serve`` writes JSON lines with the request id it
echoes, and a worker's Celery logging writes JSON lines carrying the job id."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.postgres import fresh_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database("grft_obs_logs") as url:
        yield url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def json_lines(text: str) -> list[dict[str, object]]:
    """The JSON objects among ``text``'s lines (a child's warnings before logging starts are not)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRFT_")}
    env.update(GRFT_HOME=str(tmp_path / "home"), GRFT_LOG_FORMAT="json", OMP_NUM_THREADS="1", **extra)
    return env


def test_serve_writes_json_lines_with_the_request_id(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    env = clean_env(
        tmp_path,
        GRFT_DATABASE_URL=database_url,
        GRFT_BROKER_URL="redis://127.0.0.1:6379/13",
        GRFT_ARTIFACT_URL=(tmp_path / "artifacts").as_uri(),
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert serve.poll() is None, log.read_text()
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/v1/models", headers={"X-Request-ID": "proc-json-1"}, timeout=10
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
        assert response.status_code == 401
        assert response.headers["x-request-id"] == "proc-json-1"
        time.sleep(0.5)  # the access line is written as the response ends
    finally:
        serve.terminate()
        serve.wait(60)
    lines = json_lines(log.read_text())
    assert lines, log.read_text()
    access = [e for e in lines if e.get("request_id") == "proc-json-1"]
    assert len(access) == 1, log.read_text()
    assert access[0]["logger"] == "grft.access"
    assert access[0]["status"] == 401
    assert access[0]["route"] == "/v1/models"
    assert {"time", "level", "logger", "message", "tenant_id", "job_id"} <= set(access[0])
    assert any(str(e["logger"]).startswith("uvicorn") for e in lines)  # the server's own lines too


def test_worker_logging_writes_json_with_the_job_id(tmp_path: Path) -> None:
    script = (
        "import logging\n"
        "from worker.celery_app import app\n"
        "app.log.setup(loglevel='INFO')\n"  # what a Celery worker does at start-up
        "from domain import logging as log_context\n"
        "with log_context.bound(job_id='ftjob-logs-1'):\n"
        "    logging.getLogger('worker.runner').warning('inside the task')\n"
        "logging.getLogger('celery.worker').warning('outside any task')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = json_lines(result.stdout + result.stderr)
    by_message = {e["message"]: e for e in lines}
    assert by_message["inside the task"]["job_id"] == "ftjob-logs-1"
    assert by_message["inside the task"]["level"] == "warning"
    assert by_message["outside any task"]["job_id"] is None
