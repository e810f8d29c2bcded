"""Fault injection on real processes (DESIGN §5, CONVENTIONS 13): each test gets a fresh Postgres
database, a Redis server of its own (so that it can be killed and restarted empty without touching the
shared one), and plain ``grft worker`` processes (no ``--control``), each with its own ``GRFT_HOME`` as
on separate machines, sharing the database, the broker and the artifact store.

Short leases, heartbeats and reconcile periods come to the workers as ``GRFT_*`` variables, so that
recoveries take seconds. Set ``GRFT_FAULTS_REPORT=<file>`` to have the measured recovery times
appended to that file as JSON lines.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from api.cli import worker_env
from domain.db import session_scope
from domain.jobs.models import Job, JobCheckpoint, JobEvent
from domain.models import Adapter
from domain.settings import Settings
from grft_core.data.samples import digits_image_folder
from grft_core.method.config import GRFTConfig
from grft_core.models.registry import ModelRegistry
from tests.conftest import insert_tenant_job
from tests.postgres import fresh_database

log = logging.getLogger(__name__)
T = TypeVar("T")

TIMEOUT_S = 240.0
GRFT = Path(sys.executable).with_name("grft")
TERMINAL = ("succeeded", "failed", "cancelled")


def method(epochs: int, checkpoint_every: int = 4) -> dict[str, Any]:
    """``tiny-cnn`` on 16-px digits: about 7 steps an epoch, a tenth of a second each on one core."""
    return GRFTConfig.from_dict(
        {
            "k": 2,
            "epochs": epochs,
            "batch_size": 16,
            "lr": 5e-3,
            "image_size": 16,
            "selection_samples": 16,
            "selection_batch_size": 8,
            "checkpoint_every": checkpoint_every,
        }
    ).to_dict()


def until(what: str, check: Callable[[], T | None], timeout: float = TIMEOUT_S, every: float = 0.2) -> T:
    """Poll ``check`` until it returns something other than None (or False); fail after ``timeout``.
    A database that is out of reach for a moment (the tests cut it) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OperationalError:
            value = None
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --- Redis ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A ``redis-server`` of the test's own, with no persistence: a restart comes back empty."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "no",
        ]  # fmt: skip
        with (self.folder / "redis.log").open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        try:
            until("redis-server to answer", lambda: self._ping(client), timeout=30, every=0.05)
        finally:
            client.close()

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    yield server
    server.kill()


# --- the service's state ----------------------------------------------------------------------------


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_database("grft_faults") as url:
        yield url


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Path:
    root = tmp_path_factory.mktemp("fault-datasets")
    digits_image_folder(root, size=16, limit_per_class=12)  # 120 images, 10 classes
    ModelRegistry(model_store).get("tiny-cnn")  # built once here, not by two workers at once
    return root


@pytest.fixture
def settings(
    database_url: str, redis_server: RedisServer, tmp_path: Path, model_store: Path, digits_root: Path
) -> Settings:
    return Settings(
        env="test",
        secret_key="test-secret",
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=redis_server.url,
        artifact_url=(tmp_path / "artifacts").as_uri(),
        model_dir=model_store,
        dataset_roots=[digits_root],
        queue=f"grft-faults-{uuid.uuid4().hex[:8]}",
        heartbeat_seconds=0.5,
        lease_seconds=6.0,
        reconcile_seconds=1.0,
        republish_seconds=3.0,
        max_attempts=3,
        torch_threads=1,
    )


def digits_uri(settings: Settings) -> str:
    return (settings.dataset_roots[0] / "digits").as_uri()


def insert_job(settings: Settings, job_method: dict[str, Any], status: str = "validating_files") -> str:
    """A job of a new tenant on ``tiny-cnn`` and the digits, as the API would have committed it."""
    return insert_tenant_job(
        settings,
        "faults",
        model="tiny-cnn",
        training_file=digits_uri(settings),
        method=job_method,
        status=status,
        max_attempts=settings.max_attempts,
    )


def get_job(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)
        session.expunge(job)
    return job


def checkpoint_step(settings: Settings, job_id: str) -> int:
    """The job's latest checkpoint step in the database (0: none yet)."""
    with session_scope(settings.database_url) as session:
        step = session.scalar(select(func.max(JobCheckpoint.step)).where(JobCheckpoint.job_id == job_id))
    return int(step or 0)


def messages(settings: Settings, job_id: str) -> list[str]:
    with session_scope(settings.database_url) as session:
        query = select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.created_at)
        return list(session.scalars(query))


def adapters_of(settings: Settings, job_id: str) -> list[str]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Adapter.id).where(Adapter.job_id == job_id)))


def assert_outcome(settings: Settings, job_id: str, status: str, attempt: int) -> Job:
    """The job ended in ``status`` on attempt ``attempt``, with exactly one adapter if it succeeded
    (the job names it) and none otherwise, and ran once per attempt."""
    job = get_job(settings, job_id)
    assert (job.status, job.attempt) == (status, attempt), job.error
    adapters = adapters_of(settings, job_id)
    if status == "succeeded":
        assert adapters == [job.adapter_id]
    else:
        assert adapters == []
        assert job.adapter_id is None
    started = [m for m in messages(settings, job_id) if m.startswith("Fine-tuning job started")]
    assert len(started) == attempt, started
    return job


def wait_for_end(settings: Settings, job_id: str, timeout: float = TIMEOUT_S) -> Job:
    return until(
        f"{job_id} to end",
        lambda: job if (job := get_job(settings, job_id)).status in TERMINAL else None,
        timeout,
    )


def report(name: str, **times: float) -> None:
    """Log (and append to ``GRFT_FAULTS_REPORT``, if set) the recovery times a test measured."""
    line = {"test": name, **{k: round(v, 1) for k, v in times.items()}}
    log.warning("recovery times: %s", line)
    target = os.environ.get("GRFT_FAULTS_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(json.dumps(line) + "\n")


# --- workers ----------------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def holds(self, job_id: str) -> bool:
        """True while this worker runs ``job_id`` (its lease's work folder is in this worker's home)."""
        return any((self.home / "work").glob(f"{job_id}-run-*"))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, as when a machine dies or the OOM killer strikes."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)


class Workers:
    """Plain ``grft worker`` processes, each with its own ``GRFT_HOME``."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings, self.folder = settings, folder
        self.started: list[Worker] = []

    def start(self, count: int = 1, *, ready: bool = True) -> list[Worker]:
        new = [self._start(f"worker-{len(self.started) + i}") for i in range(count)]
        self.started.extend(new)
        if ready:
            for worker in new:
                self.wait_ready(worker)
        return new

    def _start(self, name: str) -> Worker:
        home = self.folder / name
        env = worker_env(self.settings.model_copy(update={"home": home}))
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        log_path = self.folder / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [str(GRFT), "worker"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return Worker(name, home, log_path, process)

    def wait_ready(self, worker: Worker) -> None:
        def ready() -> bool:
            if not worker.alive():
                pytest.fail(f"{worker.name} exited ({worker.process.returncode}):\n{worker.output()[-4000:]}")
            return " ready." in worker.output()

        until(f"{worker.name} to be ready", ready, timeout=120)

    def alive(self) -> list[Worker]:
        return [w for w in self.started if w.alive()]

    def holder(self, job_id: str) -> Worker | None:
        return next((w for w in self.alive() if w.holds(job_id)), None)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.output()[-3000:]}" for w in self.started)

    def stop(self) -> None:
        for worker in self.alive():
            worker.process.terminate()
        for worker in self.started:
            try:
                worker.process.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(settings, tmp_path / "workers")
    pool.folder.mkdir()
    yield pool
    pool.stop()
    # Shown by pytest when the test failed: what the workers said.
    log.warning("worker logs:\n%s", pool.logs())
