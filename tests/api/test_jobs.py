"""``/v1/fine_tuning/jobs``: validated, idempotent creation published to the real Redis, tenant-scoped
reads, cancel, events (list and stream), checkpoints and metrics."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.jobs.models import Job, JobCheckpoint, JobEvent
from domain.settings import Settings
from grft_core.method.config import GRFTConfig
from tests.api.conftest import REDIS_URL
from tests.api.test_files import upload

Auth = dict[str, str]
GRFT = {"type": "grft", "grft": {"hyperparameters": {"k": 2, "l2_lambda": 0.01, "n_epochs": 2}}}


@pytest.fixture(autouse=True)
def broker() -> Iterator[redis.Redis]:
    """The test Redis database, empty before and after each test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def file_id(client: TestClient, auth: Auth) -> str:
    return str(upload(client, auth).json()["id"])


@pytest.fixture
def job_id(client: TestClient, auth: Auth, file_id: str) -> str:
    return str(create(client, auth, file_id).json()["id"])


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
    ("GET", "/events"),
    ("GET", "/events?stream=true"),
    ("GET", "/checkpoints"),
    ("GET", "/metrics"),
]


class TestJobEndpointAccess:
    @pytest.mark.parametrize(("method", "path"), JOB_ENDPOINTS)
    def test_anonymous(self, client: TestClient, auth: Auth, job_id: str, method: str, path: str) -> None:
        response = client.request(method, f"/v1/fine_tuning/jobs/{job_id}{path}")

        assert response.status_code == 401

    @pytest.mark.parametrize(("method", "path"), JOB_ENDPOINTS)
    def test_other_tenant(
        self, client: TestClient, auth: Auth, other_auth: Auth, job_id: str, method: str, path: str
    ) -> None:
        response = client.request(method, f"/v1/fine_tuning/jobs/{job_id}{path}", headers=other_auth)

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert (
            client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth).json()["status"] == "validating_files"
        )


class TestCreateJob:
    def test_creates_validating_job_and_publishes_it(
        self,
        client: TestClient,
        auth: Auth,
        file_id: str,
        db: Session,
        settings: Settings,
        broker: redis.Redis,
    ) -> None:
        response = create(client, auth, file_id, seed=7, suffix="demo", metadata={"team": "nlp"})

        assert response.status_code == 200
        job = response.json()
        assert job["object"] == "fine_tuning.job"
        assert job["status"] == "validating_files"
        assert (job["model"], job["training_file"], job["seed"]) == ("tiny-bert", file_id, 7)
        assert job["metadata"] == {"team": "nlp"}
        assert job["user_provided_suffix"] == "demo"
        assert job["method"]["type"] == "grft"
        assert job["method"]["grft"]["hyperparameters"]["k"] == 2
        assert job["method"]["grft"]["hyperparameters"]["l2_lambda"] == 0.01
        assert job["hyperparameters"]["n_epochs"] == 2
        assert job["fine_tuned_model"] is None
        assert job["error"] is None
        assert job["progress"] == {"steps_completed": 0, "total_steps": None, "seconds_remaining": None}
        row = db.get(Job, job["id"])
        assert row is not None
        assert job["organization_id"] == row.tenant_id
        config = GRFTConfig.from_dict(row.method)
        assert (config.method, config.k, config.l2_lambda) == ("grft", 2, 0.01)
        assert (config.epochs, config.seed) == (2, 7)
        assert published(broker, settings.queue) == [("grft.validate_job", [job["id"]])]

    def test_dataset_uri_under_an_allowed_root(
        self, client: TestClient, auth: Auth, settings: Settings, tmp_path: Path
    ) -> None:
        settings.dataset_roots = [tmp_path]
        (tmp_path / "train.csv").write_bytes(b"text,label\na,b\n")

        response = create(client, auth, (tmp_path / "train.csv").as_uri())

        assert response.status_code == 200
        assert response.json()["training_file"] == (tmp_path / "train.csv").as_uri()

    @pytest.mark.parametrize(
        ("fields", "status", "code", "param"),
        [
            ({"model": "no-such-model"}, 404, "model_not_found", "model"),
            ({"training_file": "file-missing"}, 404, "not_found", "training_file"),
            ({"training_file": "ftp://example.com/train.csv"}, 422, "invalid_dataset", "training_file"),
            ({"training_file": "/etc/passwd"}, 422, "invalid_dataset", "training_file"),
            ({"training_file": "file:///etc/passwd"}, 422, "invalid_dataset", "training_file"),
            ({"training_file": "https://127.0.0.1/t.csv"}, 422, "invalid_dataset", "training_file"),
            ({"training_file": "https://169.254.169.254/x"}, 422, "invalid_dataset", "training_file"),
            ({"validation_file": "https://localhost/v.csv"}, 422, "invalid_dataset", "validation_file"),
            ({"temperature": 0.5}, 422, "invalid_request", "temperature"),
            ({"suffix": "x" * 65}, 422, "invalid_request", "suffix"),
            ({"metadata": {str(i): "v" for i in range(17)}}, 422, "invalid_request", "metadata"),
            ({"method": {"type": "lora", "grft": {}}}, 422, "invalid_request", "method"),
            ({"method": {"type": "dpo"}}, 422, "invalid_request", "method.type"),
        ],
    )
    def test_refuses_request(
        self,
        client: TestClient,
        auth: Auth,
        file_id: str,
        fields: dict[str, Any],
        status: int,
        code: str,
        param: str,
    ) -> None:
        response = create(client, auth, file_id, **fields)

        assert response.status_code == status
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)

    @pytest.mark.parametrize(
        ("hyperparameters", "code", "param"),
        [
            ({"l2_lambda": -0.1}, "invalid_request", "l2_lambda"),
            ({"k": 0}, "invalid_request", "k"),
            ({"k": {"query": 0}}, "invalid_request", "k"),
            ({"k": {}}, "invalid_request", "k"),
            # Strict: no coercion of strings, booleans or fractions into integers.
            ({"k": "4"}, "invalid_request", "k"),
            ({"k": True}, "invalid_request", "k"),
            ({"k": 2.5}, "invalid_request", "k"),
            ({"epochs": 2}, "invalid_request", "epochs"),  # the API's name is n_epochs
            ({"lora_rank": 4}, "invalid_request", "lora_rank"),  # a LoRA option, not GRFT's
            ({"n_epochs": 0}, "invalid_request", "n_epochs"),
            ({"learning_rate_multiplier": 1e6}, "invalid_request", "learning_rate_multiplier"),
            ({"axis": "diagonal"}, "invalid_request", "axis"),
            ({"dropout": 0.1}, "invalid_request", "dropout"),
        ],
    )
    def test_refuses_hyperparameters(
        self,
        client: TestClient,
        auth: Auth,
        file_id: str,
        hyperparameters: dict[str, Any],
        code: str,
        param: str,
    ) -> None:
        method = {"type": "grft", "grft": {"hyperparameters": hyperparameters}}

        response = create(client, auth, file_id, method=method)

        assert response.status_code == 422
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (code, f"method.grft.hyperparameters.{param}")

    @pytest.mark.parametrize(
        ("k", "message"),
        [
            (0, "k must be between 1 and 65536 (got 0)"),
            ({"query": 0}, "k['query'] must be between 1 and 65536 (got 0)"),
            ("4", "k must be an integer (got '4')"),
            (True, "k must be an integer (got True)"),
        ],
    )
    def test_bad_k_is_explained(
        self, client: TestClient, auth: Auth, file_id: str, k: Any, message: str
    ) -> None:
        method = {"type": "grft", "grft": {"hyperparameters": {"k": k}}}

        response = create(client, auth, file_id, method=method)

        assert response.status_code == 422
        assert message in response.json()["error"]["message"]

    def test_json_integers_are_valid_floats(
        self, client: TestClient, auth: Auth, file_id: str, db: Session
    ) -> None:
        hyperparameters = {"l2_lambda": 0, "learning_rate": 1, "warmup": 0, "k": {"query": 2, "*": 1}}
        method = {"type": "grft", "grft": {"hyperparameters": hyperparameters}}

        response = create(client, auth, file_id, method=method)

        assert response.status_code == 200, response.text
        shown = response.json()["method"]["grft"]["hyperparameters"]
        assert (shown["l2_lambda"], shown["learning_rate"], shown["warmup"]) == (0.0, 1.0, 0.0)
        assert shown["k"] == {"query": 2, "*": 1}
        row = db.get(Job, response.json()["id"])
        assert row is not None
        config = GRFTConfig.from_dict(row.method)
        assert (config.l2_lambda, config.lr, config.warmup_ratio) == (0.0, 1.0, 0.0)
        assert isinstance(config.l2_lambda, float)

    def test_each_method_takes_its_own_options(
        self, client: TestClient, auth: Auth, file_id: str, db: Session
    ) -> None:
        lora = {"type": "lora", "lora": {"hyperparameters": {"lora_rank": 4, "n_epochs": 1}}}
        grft_knob = {"type": "lora", "lora": {"hyperparameters": {"k": 4}}}

        accepted = create(client, auth, file_id, method=lora)
        refused = create(client, auth, file_id, method=grft_knob)

        assert accepted.status_code == 200, accepted.text
        shown = accepted.json()["method"]["lora"]["hyperparameters"]
        assert (shown["lora_rank"], shown["n_epochs"]) == (4, 1)
        assert "k" not in shown  # a LoRA job shows LoRA's knobs only
        row = db.get(Job, accepted.json()["id"])
        assert row is not None
        assert (row.method["method"], row.method["lora_rank"], row.method["epochs"]) == ("lora", 4, 1)
        assert refused.status_code == 422
        assert refused.json()["error"]["param"] == "method.lora.hyperparameters.k"

    def test_request_schema_carries_the_library_bounds(self, client: TestClient) -> None:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]

        grft = schemas["GrftHyperparameters"]["properties"]
        epochs = grft["n_epochs"]["anyOf"][0]
        assert (epochs["minimum"], epochs["maximum"]) == (1, 1000)
        assert grft["n_epochs"]["description"] == GRFTConfig.model_fields["epochs"].description
        assert grft["l2_lambda"]["anyOf"][0]["maximum"] == 1000
        assert "lora_rank" not in grft
        assert schemas["LoraHyperparameters"]["properties"]["lora_rank"]["anyOf"][0]["maximum"] == 4096

    def test_file_of_another_tenant(self, client: TestClient, other_auth: Auth, file_id: str) -> None:
        response = create(client, other_auth, file_id)

        assert response.status_code == 404
        assert response.json()["error"]["param"] == "training_file"

    def test_legacy_hyperparameters_and_auto(self, client: TestClient, auth: Auth, file_id: str) -> None:
        legacy = {"n_epochs": 4, "batch_size": "auto", "learning_rate_multiplier": 2}
        method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto"}}}

        job = create(client, auth, file_id, hyperparameters=legacy, method=method).json()

        assert job["hyperparameters"] == {"n_epochs": 4, "batch_size": 32, "learning_rate_multiplier": 2.0}
        assert job["method"]["type"] == "full"

    def test_same_idempotency_key_and_body_returns_the_same_job(
        self,
        client: TestClient,
        auth: Auth,
        file_id: str,
        db: Session,
        settings: Settings,
        broker: redis.Redis,
    ) -> None:
        first = create(client, auth, file_id, headers={"Idempotency-Key": "k-1"})
        again = create(client, auth, file_id, headers={"Idempotency-Key": "k-1"})

        assert (first.status_code, again.status_code) == (200, 200)
        assert again.json()["id"] == first.json()["id"]
        assert db.scalar(select(func.count()).select_from(Job)) == 1
        assert len(published(broker, settings.queue)) == 1

    def test_same_idempotency_key_with_another_body(
        self, client: TestClient, auth: Auth, file_id: str
    ) -> None:
        create(client, auth, file_id, headers={"Idempotency-Key": "k-2"})

        response = create(client, auth, file_id, seed=99, headers={"Idempotency-Key": "k-2"})

        assert response.status_code == 409
        assert response.json()["error"]["param"] == "Idempotency-Key"

    def test_active_job_quota(self, client: TestClient, auth: Auth, file_id: str, settings: Settings) -> None:
        settings.max_active_jobs_per_tenant = 2
        for _ in range(2):
            assert create(client, auth, file_id).status_code == 200

        response = create(client, auth, file_id)

        assert response.status_code == 429
        assert response.json()["error"]["code"] == "quota_exceeded"

    def test_broker_down_keeps_the_job(
        self, client: TestClient, auth: Auth, file_id: str, db: Session, settings: Settings
    ) -> None:
        settings.broker_url = "redis://127.0.0.1:1/15"  # nothing listens there

        response = create(client, auth, file_id)

        assert response.status_code == 200
        assert db.get(Job, response.json()["id"]) is not None

    def test_anonymous(self, client: TestClient, file_id: str) -> None:
        assert create(client, {}, file_id).status_code == 401


class TestListJobs:
    def test_pages_newest_first_with_filters(
        self, client: TestClient, auth: Auth, file_id: str, db: Session
    ) -> None:
        ids = [create(client, auth, file_id, metadata={"n": str(i)}).json()["id"] for i in range(3)]
        set_job(db, ids[0], status="queued")

        first = client.get("/v1/fine_tuning/jobs", headers=auth, params={"limit": 2}).json()
        rest = client.get("/v1/fine_tuning/jobs", headers=auth, params={"after": first["last_id"]}).json()
        queued = client.get("/v1/fine_tuning/jobs", headers=auth, params={"status": "queued"}).json()
        tagged = client.get("/v1/fine_tuning/jobs", headers=auth, params={"metadata[n]": "1"}).json()

        assert [j["id"] for j in first["data"]] == [ids[2], ids[1]]
        assert first["has_more"] is True
        assert [j["id"] for j in rest["data"]] == [ids[0]]
        assert rest["has_more"] is False
        assert [j["id"] for j in queued["data"]] == [ids[0]]
        assert [j["id"] for j in tagged["data"]] == [ids[1]]

    def test_anonymous(self, client: TestClient) -> None:
        assert client.get("/v1/fine_tuning/jobs").status_code == 401

    def test_other_tenant(self, client: TestClient, auth: Auth, other_auth: Auth, job_id: str) -> None:
        assert client.get("/v1/fine_tuning/jobs", headers=other_auth).json()["data"] == []
        after = client.get("/v1/fine_tuning/jobs", headers=other_auth, params={"after": job_id})
        assert after.status_code == 404


class TestRetrieveJob:
    def test_shows_progress_and_result(
        self, client: TestClient, auth: Auth, job_id: str, db: Session
    ) -> None:
        finished = datetime(2030, 1, 1, tzinfo=UTC)
        set_job(
            db, job_id, status="succeeded", adapter_id="adapter-x", steps_completed=10, total_steps=10,
            trainable_params=1234, finished_at=finished,
        )  # fmt: skip

        job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth).json()

        assert (job["status"], job["fine_tuned_model"], job["adapter_id"]) == (
            "succeeded",
            "adapter-x",
            "adapter-x",
        )
        assert job["progress"]["steps_completed"] == 10
        assert job["trainable_params"] == 1234
        assert job["finished_at"] == int(finished.timestamp())


class TestCancelJob:
    @pytest.mark.parametrize(("before", "after"), [("queued", "cancelled"), ("running", "cancelling")])
    def test_cancels(
        self, client: TestClient, auth: Auth, job_id: str, db: Session, before: str, after: str
    ) -> None:
        set_job(db, job_id, status=before)

        response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth)

        assert response.status_code == 200
        assert response.json()["status"] == after
        assert (response.json()["finished_at"] is not None) == (after == "cancelled")
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth).json()["data"]
        assert "ancel" in events[0]["message"]

    def test_finished_job_conflicts(self, client: TestClient, auth: Auth, job_id: str, db: Session) -> None:
        set_job(db, job_id, status="succeeded")

        response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth)

        assert response.status_code == 409
        assert "already finished (succeeded)" in response.json()["error"]["message"]


class TestEvents:
    def test_pages_newest_first(self, client: TestClient, auth: Auth, job_id: str, db: Session) -> None:
        ids = add_events(db, job_id, ("message", None), ("metrics", {"step": 1, "train_loss": 0.5}))
        url = f"/v1/fine_tuning/jobs/{job_id}/events"

        first = client.get(url, headers=auth, params={"limit": 3}).json()
        rest = client.get(url, headers=auth, params={"after": first["data"][-1]["id"]}).json()

        assert [e["id"] for e in first["data"]][:2] == ids[::-1]
        assert first["has_more"] is True
        assert first["data"][0]["object"] == "fine_tuning.job.event"
        assert first["data"][0]["type"] == "metrics"
        assert first["data"][0]["data"]["train_loss"] == 0.5
        assert len(rest["data"]) == 1
        assert rest["has_more"] is False
        assert rest["data"][0]["message"].startswith("Created fine-tuning job")

    def test_stream_sends_all_then_ends_for_a_finished_job(
        self, client: TestClient, auth: Auth, job_id: str, db: Session
    ) -> None:
        ids = add_events(db, job_id, ("message", None), ("message", None))
        set_job(db, job_id, status="succeeded")

        with client.stream(
            "GET", f"/v1/fine_tuning/jobs/{job_id}/events?stream=true", headers=auth
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            data = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]

        assert data[-1] == "[DONE]"
        events = [json.loads(d) for d in data[:-1]]
        assert len(events) == 4
        assert [e["id"] for e in events[-2:]] == ids
        assert events[0]["message"].startswith("Created fine-tuning job")


class TestCheckpoints:
    def test_pages_latest_step_first(self, client: TestClient, auth: Auth, job_id: str, db: Session) -> None:
        base = datetime.now(UTC)
        for i, step in enumerate((50, 100, 150)):
            db.add(
                JobCheckpoint(
                    id=f"ckpt-{step}", job_id=job_id, step=step, uri=f"file:///c/{step}",
                    metrics={"train_loss": 1.0 / step}, created_at=base + timedelta(seconds=i),
                )
            )  # fmt: skip
        db.commit()
        url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"

        first = client.get(url, headers=auth, params={"limit": 2}).json()
        rest = client.get(url, headers=auth, params={"after": first["last_id"]}).json()

        assert [c["step_number"] for c in first["data"]] == [150, 100]
        assert first["has_more"] is True
        assert [c["step_number"] for c in rest["data"]] == [50]
        assert rest["has_more"] is False
        checkpoint = first["data"][0]
        assert checkpoint["object"] == "fine_tuning.job.checkpoint"
        assert checkpoint["fine_tuned_model_checkpoint"] == f"{job_id}:ckpt-step-150"
        assert checkpoint["metrics"] == {"step": 150, "train_loss": 1.0 / 150}


class TestMetrics:
    def test_series_from_metric_events(
        self, client: TestClient, auth: Auth, job_id: str, db: Session
    ) -> None:
        add_events(
            db, job_id,
            ("metrics", {"step": 1, "train_loss": 0.9, "lr": 0.001}),
            ("message", {"train_loss": 123.0}),
            ("metrics", {"step": 2, "train_loss": 0.7, "lr": 0.002}),
            ("metrics", {"epoch": 1, "val_accuracy": 0.8, "val_loss": 0.6}),
        )  # fmt: skip

        metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", headers=auth).json()

        assert metrics["train_loss"] == [{"step": 1, "value": 0.9}, {"step": 2, "value": 0.7}]
        assert metrics["lr"] == [{"step": 1, "value": 0.001}, {"step": 2, "value": 0.002}]
        assert metrics["val_accuracy"] == [{"epoch": 1, "value": 0.8}]
        assert metrics["val_loss"] == [{"epoch": 1, "value": 0.6}]
