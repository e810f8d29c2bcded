"""One causal-LM fine-tuning job through the real API (files, jobs, events, adapters) and the worker's
validate and run steps, on Postgres and Redis: chat JSONL in, an adapter without a head and the job's
trained_tokens out. A bad chat line fails the job with the line named."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import delete

from api.main import create_app
from domain.auth.keys import create_key
from domain.auth.models import Tenant
from domain.auth.repository import tenant_by_name
from domain.db import session_scope
from domain.settings import Settings
from tests.lm.helpers import chat_lines, write_jsonl
from tests.postgres import fresh_database
from worker.runner import run_job, validate_job

REDIS_URL = "redis://127.0.0.1:6379/13"
HYPERPARAMETERS = {"k": 4, "n_epochs": 2, "batch_size": 8, "learning_rate": 0.05, "max_length": 64}


@dataclass
class Service:
    client: TestClient
    settings: Settings
    auth: dict[str, str]
    sent: list[tuple[str, str]]


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database("grft_lm") as url:
        yield url


@pytest.fixture
def service(database_url: str, tmp_path: Path, model_store: Path, tiny_lm: str) -> Iterator[Service]:
    settings = Settings(
        env="test",
        secret_key="test-secret",
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=REDIS_URL,
        artifact_url=(tmp_path / "artifacts").as_uri(),
        model_dir=model_store,
        queue=f"grft-lm-{uuid.uuid4().hex[:8]}",
        heartbeat_seconds=0.5,
    )
    name = f"lm-{uuid.uuid4().hex[:8]}"
    with session_scope(database_url) as session:
        key = create_key(session, name)
    with TestClient(create_app(settings)) as client:
        yield Service(client, settings, {"Authorization": f"Bearer {key}"}, [])
    with session_scope(database_url) as session:
        tenant = tenant_by_name(session, name)
        assert tenant is not None
        session.execute(delete(Tenant).where(Tenant.id == tenant.id))  # cascades to files, jobs, adapters
    broker = redis.Redis.from_url(REDIS_URL)
    broker.delete(settings.queue)
    broker.close()


def start_job(service: Service, rows: list[Any], tmp_path: Path, model: str) -> str:
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    uploaded = service.client.post(
        "/v1/files",
        headers=service.auth,
        files={"file": ("chat.jsonl", path.read_bytes(), "application/jsonl")},
        data={"purpose": "fine-tune"},
    )
    assert uploaded.status_code == 200, uploaded.text
    body = {
        "model": model,
        "training_file": uploaded.json()["id"],
        "method": {"type": "grft", "grft": {"hyperparameters": HYPERPARAMETERS}},
    }
    created = service.client.post("/v1/fine_tuning/jobs", headers=service.auth, json=body)
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def work(service: Service, job_id: str) -> dict[str, Any]:
    """What the worker's tasks do with the job (validate, then run), then the job as the API shows it."""

    def publish(name: str, job: str) -> None:
        service.sent.append((name, job))

    validate_job(service.settings, job_id, publish)
    if service.sent:
        run_job(service.settings, job_id, publish)
    response = service.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=service.auth)
    assert response.status_code == 200
    return dict(response.json())


def test_chat_job_trains_an_adapter(service: Service, tmp_path: Path, tiny_lm: str) -> None:
    job_id = start_job(service, chat_lines(40), tmp_path, tiny_lm)

    job = work(service, job_id)

    assert job["status"] == "succeeded", job["error"]
    assert job["model"] == tiny_lm
    assert job["trained_tokens"] > 0
    # Per layer, 4 rows of q, k, v, o, gate and up (32 inputs) and of down (64 inputs); no biases.
    assert job["trainable_params"] == 2 * (6 * 4 * 32 + 4 * 64)
    adapter = service.client.get(f"/v1/adapters/{job['adapter_id']}", headers=service.auth).json()
    assert adapter["base_model"] == tiny_lm
    events = service.client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events?limit=100", headers=service.auth
    ).json()
    messages = " ".join(e["message"] for e in events["data"])
    assert "Files validated (36 training examples)" in messages


def test_bad_line_fails_the_job_naming_it(service: Service, tmp_path: Path, tiny_lm: str) -> None:
    rows: list[Any] = list(chat_lines(10))
    rows[6] = {"messages": [{"role": "user", "content": "hi"}]}
    job_id = start_job(service, rows, tmp_path, tiny_lm)

    job = work(service, job_id)

    assert job["status"] == "failed"
    assert "line 7" in job["error"]["message"]
    assert "no assistant message" in job["error"]["message"]
