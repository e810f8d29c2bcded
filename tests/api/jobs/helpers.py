"""Helpers shared by the ``/v1/fine_tuning/jobs`` tests: create a job through the API, change or annotate
its row directly, and read what was published to the broker."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from domain.jobs.models import Job, JobEvent

Auth = dict[str, str]
GRFT = {"type": "grft", "grft": {"hyperparameters": {"k": 2, "l2_lambda": 0.01, "n_epochs": 2}}}


def create(client: TestClient, auth: Auth, file_id: str, headers: Auth | None = None, **fields: Any) -> Any:
    body = {"model": "tiny-bert", "training_file": file_id, "method": GRFT, **fields}
    return client.post("/v1/fine_tuning/jobs", headers={**auth, **(headers or {})}, json=body)


def set_job(db: Session, job_id: str, **values: Any) -> Job:
    job = db.get(Job, job_id)
    assert job is not None
    for name, value in values.items():
        setattr(job, name, value)
    db.commit()
    return job


def add_events(db: Session, job_id: str, *items: tuple[str, dict[str, Any] | None]) -> list[str]:
    ids = []
    for i, (kind, data) in enumerate(items):
        ids.append(f"ftevent-test{job_id[-6:]}{i}")
        db.add(JobEvent(id=ids[-1], job_id=job_id, type=kind, message=f"event {i}", data=data))
        db.flush()
    db.commit()
    return ids


def published(broker: redis.Redis, queue: str) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting on ``queue``."""
    out = []
    for raw in broker.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], args))
    return out


# Every endpoint of one job: (HTTP method, path after /v1/fine_tuning/jobs/{id}).
JOB_ENDPOINTS = [
    ("GET", ""),
    ("POST", "/cancel"),
    ("POST", "/pause"),
    ("POST", "/resume"),
    ("GET", "/events"),
    ("GET", "/events?stream=true"),
    ("GET", "/checkpoints"),
    ("GET", "/metrics"),
]
