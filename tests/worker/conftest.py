"""Worker fixtures: a fresh Postgres database for the session (real commits: the code under test opens
its own sessions), Redis db 14, per-test settings, and small text datasets for ``tiny-bert``."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from domain.artifacts import ArtifactStore
from domain.auth.models import Tenant
from domain.db import session_scope, utcnow
from domain.files.models import File
from domain.ids import new_id
from domain.jobs.models import Job
from domain.settings import Settings
from grft_core.method.config import GRFTConfig
from tests.conftest import make_texts
from tests.postgres import fresh_database

REDIS_URL = "redis://127.0.0.1:6379/14"
LABELS = ["sport", "business", "arts"]
# Small enough to train in about a second on one core, with checkpoints every 2 of its 12 steps.
METHOD: dict[str, Any] = GRFTConfig.from_dict(
    {
        "k": 2,
        "epochs": 2,
        "batch_size": 8,
        "lr": 5e-3,
        "selection_samples": 16,
        "selection_batch_size": 8,
        "max_length": 16,
    }
).to_dict()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database("grft_worker") as url:
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path, model_store: Path) -> Settings:
    return Settings(
        env="test",
        secret_key="test-secret",
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=REDIS_URL,
        artifact_url=(tmp_path / "artifacts").as_uri(),
        model_dir=model_store,
        dataset_roots=[tmp_path / "datasets"],
        checkpoint_every=2,
        heartbeat_seconds=0.5,
        queue=f"grft-test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def tenant(settings: Settings) -> str:
    with session_scope(settings.database_url) as session:
        row = Tenant(id=new_id("tenant"), name=f"t-{uuid.uuid4().hex[:10]}")
        session.add(row)
    return row.id


def write_csv(path: Path, rows: int = 48, header: tuple[str, str] = ("text", "label")) -> Path:
    items, labels = make_texts(rows, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows((item, LABELS[label]) for item, label in zip(items, labels, strict=True))
    return path


@pytest.fixture
def dataset(settings: Settings) -> Path:
    """A text CSV under the settings' allowed dataset root."""
    return write_csv(settings.dataset_roots[0] / "news.csv")


def upload(settings: Settings, tenant_id: str, source: Path, filename: str = "news.csv") -> str:
    """Store ``source`` as an uploaded file (as the files API does) and return its id."""
    store = ArtifactStore(settings.artifact_url)
    file_id = new_id("file")
    key = f"files/{tenant_id}/{file_id}"
    with source.open("rb") as handle:
        size, digest = store.put_file(key, handle, 1 << 30)
    with session_scope(settings.database_url) as session:
        session.add(
            File(
                id=file_id,
                tenant_id=tenant_id,
                filename=filename,
                purpose="fine-tune",
                bytes=size,
                sha256=digest,
                uri=store.uri(key),
            )
        )
    return file_id


MakeJob = Callable[..., str]


@pytest.fixture
def make_job(settings: Settings, tenant: str) -> MakeJob:
    def make(training_file: str, *, status: str = "validating_files", **fields: Any) -> str:
        job_id = new_id("ftjob")
        values: dict[str, Any] = {
            "model": "tiny-bert",
            "method": METHOD,
            "max_attempts": settings.max_attempts,
            "enqueued_at": utcnow(),
            **fields,
        }
        with session_scope(settings.database_url) as session:
            session.add(
                Job(id=job_id, tenant_id=tenant, training_file=training_file, status=status, **values)
            )
        return job_id

    return make


def set_job(settings: Settings, job_id: str, **values: Any) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def get_job(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)
        session.expunge(job)
    return job


Sent = list[tuple[str, str]]


@pytest.fixture
def sent(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Sent:
    """Run the tasks with the test's settings; record what they publish instead of sending it."""
    from worker import tasks

    published: Sent = []
    monkeypatch.setattr(tasks, "_settings", lambda: settings)
    monkeypatch.setattr(tasks, "_publish", lambda name, job_id: published.append((name, job_id)))
    return published
