"""Client fixtures: the real app served by uvicorn in a thread on 127.0.0.1, on a fresh Postgres database
and the real Redis (requests commit for real), with keys for two tenants; and, for the tests that run a
job to its end, a real Celery worker process on the same database, broker and artifact store."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import uvicorn
from sqlalchemy import delete

from api.cli import worker_env
from api.main import create_app
from domain.auth.keys import create_key
from domain.auth.models import Tenant
from domain.auth.repository import tenant_by_name
from domain.db import session_scope
from domain.settings import Settings
from tests.conftest import make_texts
from tests.postgres import fresh_database

REDIS_URL = "redis://127.0.0.1:6379/13"
LABELS = ["sport", "business", "arts"]
# tiny-bert on 48 short texts: 12 steps, about a second of training on one core (the rest is start-up).
HYPERPARAMETERS = {
    "k": 2,
    "n_epochs": 2,
    "batch_size": 8,
    "learning_rate": 5e-3,
    "selection_samples": 16,
    "selection_batch_size": 8,
    "max_length": 16,
}


@dataclass
class Server:
    url: str
    key: str
    other_key: str
    settings: Settings
    root: Path
    csv: Path


def write_csv(path: Path, rows: int = 48) -> Path:
    items, labels = make_texts(rows, 3)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((item, LABELS[label]) for item, label in zip(items, labels, strict=True))
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("client")
    with fresh_database("grft_client") as database_url:
        settings = Settings(
            env="test",
            secret_key="test-secret",
            home=root / "home",
            database_url=database_url,
            broker_url=REDIS_URL,
            artifact_url=(root / "artifacts").as_uri(),
            model_dir=model_store,
            queue=f"client-test-{uuid.uuid4().hex[:8]}",
            checkpoint_every=4,
            heartbeat_seconds=0.5,
        )
        names = [f"client-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        keys = []
        for name in names:
            with session_scope(database_url) as session:
                keys.append(create_key(session, name))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes it over
        port = sock.getsockname()[1]
        app = create_app(settings)
        uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uv.started, "uvicorn did not start"
        try:
            yield Server(
                f"http://127.0.0.1:{port}", keys[0], keys[1], settings, root, write_csv(root / "train.csv")
            )
        finally:
            uv.should_exit = True
            thread.join(timeout=10)
            sock.close()
            for name in names:
                with session_scope(database_url) as session:
                    tenant = tenant_by_name(session, name)
                    if tenant is not None:
                        session.execute(delete(Tenant).where(Tenant.id == tenant.id))
            broker = redis.Redis.from_url(REDIS_URL)
            broker.delete(settings.queue)
            broker.close()


@pytest.fixture(scope="session")
def worker(server: Server) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process (started once, for the tests that run jobs to their end)."""
    log = server.root / "worker.log"
    env = {**worker_env(server.settings), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-P", "solo", "-c", "1", "-Q", server.settings.queue, "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
