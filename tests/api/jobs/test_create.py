"""``POST /v1/fine_tuning/jobs``: validated, idempotent creation published to the real Redis, within the
tenant's quota."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.jobs.models import Job
from domain.settings import Settings
from grft_core.method.config import GRFTConfig
from tests.api.jobs.helpers import Auth, create, published


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
        progress = job["progress"]
        openai_fields = {k: progress[k] for k in ("steps_completed", "total_steps", "seconds_remaining")}
        assert openai_fields == {"steps_completed": 0, "total_steps": None, "seconds_remaining": None}
        assert progress["phase"] == "validating"
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
            ({"training_file": "ftp://example.com/train.csv"}, 400, "invalid_dataset", "training_file"),
            ({"training_file": "/etc/passwd"}, 400, "invalid_dataset", "training_file"),
            ({"training_file": "file:///etc/passwd"}, 400, "invalid_dataset", "training_file"),
            ({"training_file": "https://127.0.0.1/t.csv"}, 400, "invalid_dataset", "training_file"),
            ({"training_file": "https://169.254.169.254/x"}, 400, "invalid_dataset", "training_file"),
            ({"validation_file": "https://localhost/v.csv"}, 400, "invalid_dataset", "validation_file"),
            ({"temperature": 0.5}, 400, "invalid_request", "temperature"),
            ({"suffix": "x" * 65}, 400, "invalid_request", "suffix"),
            ({"metadata": {str(i): "v" for i in range(17)}}, 400, "invalid_request", "metadata"),
            ({"method": {"type": "lora", "grft": {}}}, 400, "invalid_request", "method"),
            ({"method": {"type": "dpo"}}, 400, "invalid_request", "method.type"),
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

        assert response.status_code == 400
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

        assert response.status_code == 400
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
        assert refused.status_code == 400
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

        # The method's hyperparameters win over the deprecated top-level ones; "auto" is shown until
        # the worker has chosen the value.
        assert job["hyperparameters"] == {
            "n_epochs": "auto",
            "batch_size": "auto",
            "learning_rate_multiplier": 2.0,
        }
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
