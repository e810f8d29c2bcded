"""End to end through a real Celery worker process: distributed (Postgres + Redis) and embedded
(SQLite + the filesystem broker, started the way ``grft serve`` starts it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import select

from api.cli import start_worker, stop_worker, upgrade_database
from domain.db import get_engine, session_scope
from domain.jobs.models import Job, JobCheckpoint, JobEvent
from domain.queue import VALIDATE_JOB, publish
from domain.settings import Settings
from tests.conftest import insert_tenant_job
from tests.worker.conftest import METHOD, REDIS_URL, write_csv
from worker import reconcile as reconciler

pytestmark = pytest.mark.slow
TIMEOUT_S = 300


def worker_env(settings: Settings) -> dict[str, str]:
    """The settings as the ``GRFT_*`` environment of a worker process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRFT_")}
    env.update(
        GRFT_ENV=settings.env,
        GRFT_SECRET_KEY=settings.secret_key,
        GRFT_HOME=str(settings.home),
        GRFT_DATABASE_URL=settings.database_url,
        GRFT_BROKER_URL=settings.broker_url,
        GRFT_ARTIFACT_URL=settings.artifact_url,
        GRFT_MODEL_DIR=str(settings.model_dir),
        GRFT_QUEUE=settings.queue,
        GRFT_CHECKPOINT_EVERY=str(settings.checkpoint_every),
        GRFT_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds),
        GRFT_DATASET_ROOTS=json.dumps([str(p) for p in settings.dataset_roots]),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


def insert_job(settings: Settings, training_file: str, method: dict[str, Any] = METHOD) -> str:
    return insert_tenant_job(
        settings,
        "e2e",
        model="tiny-bert",
        training_file=training_file,
        method=method,
        status="validating_files",
    )


def wait_for_end(settings: Settings, job_id: str, worker: subprocess.Popen[bytes], log: Path) -> Job:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        with session_scope(settings.database_url) as session:
            job = session.get_one(Job, job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        if worker.poll() is not None:
            pytest.fail(f"the worker exited ({worker.returncode}):\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"job still {job.status} after {TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def redis_db() -> Iterator[None]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()
    client.close()


def celery_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-P", "solo", "-c", "1", "-Q", settings.queue, "--loglevel", "INFO",
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(command, env=worker_env(settings), stdout=out, stderr=subprocess.STDOUT)


def test_distributed_worker_trains_a_job(settings: Settings, redis_db: None, tmp_path: Path) -> None:
    data = write_csv(settings.dataset_roots[0] / "news.csv")
    log = tmp_path / "worker.log"
    worker = celery_worker(settings, log)
    try:
        job_id = insert_job(settings, data.as_uri())
        client = Celery("e2e-client", broker=REDIS_URL, set_as_current=False)
        client.conf.update(task_serializer="json", accept_content=["json"])
        client.send_task(VALIDATE_JOB, args=[job_id], queue=settings.queue)
        job = wait_for_end(settings, job_id, worker, log)
        assert job.status == "succeeded", job.error
        assert job.adapter_id is not None
        assert job.attempt == 1
    finally:
        worker.terminate()
        worker.wait(60)


def test_embedded_worker_trains_a_job(tmp_path: Path, model_store: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        model_dir=model_store,
        dataset_roots=[tmp_path / "datasets"],
        queue="gpu-embedded-test",
        checkpoint_every=4,
    )
    assert settings.embedded
    assert settings.database_url.startswith("sqlite")
    upgrade_database(settings)
    data = write_csv(tmp_path / "datasets" / "news.csv")
    log = tmp_path / "worker.log"
    env = worker_env(settings)
    for name in ("GRFT_DATABASE_URL", "GRFT_BROKER_URL", "GRFT_ARTIFACT_URL"):
        del env[name]  # nothing configured: the embedded defaults under GRFT_HOME
    with log.open("wb") as out:
        worker = start_worker(settings, env=env, stdout=out)
    try:
        job_id = insert_job(settings, data.as_uri())
        assert publish(settings, VALIDATE_JOB, job_id)
        job = wait_for_end(settings, job_id, worker, log)
        assert job.status == "succeeded", job.error
        assert (home / "artifacts" / "adapters" / str(job.adapter_id) / "adapter_config.json").is_file()
    finally:
        assert stop_worker(worker, timeout=30) is not None
        get_engine(settings.database_url).dispose()


def test_job_of_a_killed_worker_resumes_on_another(
    settings: Settings, redis_db: None, tmp_path: Path
) -> None:
    data = write_csv(settings.dataset_roots[0] / "news.csv")
    log = tmp_path / "worker.log"
    # Long enough (120 steps) to be killed mid-run.
    job_id = insert_job(settings, data.as_uri(), {**METHOD, "epochs": 20, "checkpoint_every": 5})
    first = celery_worker(settings, log)
    try:
        assert publish(settings, VALIDATE_JOB, job_id)
        deadline = time.monotonic() + TIMEOUT_S
        while not checkpoint_steps(settings, job_id) or max(checkpoint_steps(settings, job_id)) < 10:
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.1)
    finally:
        first.kill()  # no shutdown of any kind: the job row still says running
        first.wait(60)
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)
    assert (job.status, job.attempt) == ("running", 1)
    killed_at = max(checkpoint_steps(settings, job_id))

    # Once the heartbeat is stale, the reconciler hands the job back to the queue.
    hasty = settings.model_copy(update={"lease_seconds": 1.0})
    deadline = time.monotonic() + 30
    while not reconciler.reconcile(hasty, lambda name, jid: publish(hasty, name, jid)):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    second = celery_worker(settings, log)
    try:
        job = wait_for_end(settings, job_id, second, log)
    finally:
        second.terminate()
        second.wait(60)
    assert (job.status, job.attempt) == ("succeeded", 2), job.error
    with session_scope(settings.database_url) as session:
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    resumed = [m for m in messages if m.startswith("Resuming from the checkpoint at step")]
    assert len(resumed) == 1
    assert int(resumed[0].rsplit(" ", 1)[1]) >= killed_at


def checkpoint_steps(settings: Settings, job_id: str) -> list[int]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(JobCheckpoint.step).where(JobCheckpoint.job_id == job_id)))
