"""OpenAI parity of the jobs API that needs no worker: fine-tuned model ids and the suffix, errors typed
as OpenAI's (400, never 422), checkpoint metrics under OpenAI's names, event types, the results CSV,
continuing a fine-tuned model, and the adapter id's ``ft:…`` alias on downloads and predictions.
(Trained end to end through the openai client: ``tests/api/test_openai_client.py``.)"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from domain.adapters.models import Adapter
from domain.db import utcnow
from domain.jobs.events import add_event
from domain.jobs.models import Job, JobCheckpoint
from domain.jobs.results import results_csv
from tests.api.jobs.helpers import Auth, add_events, create, set_job


def ft_id(job: Job) -> str:
    return f"ft:{job.model}:{job.tenant_id}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')}"


class TestSuffix:
    @pytest.mark.parametrize("suffix", ["a.b", "with space", "x" * 65, "semi;colon"])
    def test_refused_like_openai(self, client: TestClient, auth: Auth, file_id: str, suffix: str) -> None:
        response = create(client, auth, file_id, suffix=suffix)

        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "invalid_request",
            "suffix",
        )

    def test_names_the_fine_tuned_model(
        self, client: TestClient, auth: Auth, file_id: str, db: Session
    ) -> None:
        job = create(client, auth, file_id, suffix="My_model-2").json()
        assert (job["user_provided_suffix"], job["fine_tuned_model"]) == ("My_model-2", None)

        set_job(db, job["id"], status="succeeded", adapter_id="adapter-x")
        shown = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()

        short = job["id"].removeprefix("ftjob-")
        assert shown["fine_tuned_model"] == f"ft:tiny-bert:{job['organization_id']}:My_model-2:{short}"


class TestErrors:
    def test_types_are_openais_and_codes_ours(
        self, client: TestClient, auth: Auth, file_id: str, job_id: str, db: Session
    ) -> None:
        missing = client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=auth).json()["error"]
        anonymous = client.get("/v1/fine_tuning/jobs")
        invalid = create(client, auth, file_id, seed=-1).json()["error"]
        set_job(db, job_id, status="succeeded")
        conflict = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth).json()["error"]

        assert (missing["type"], missing["code"]) == ("not_found_error", "not_found")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "authentication_error"
        assert (invalid["type"], invalid["param"]) == ("invalid_request_error", "seed")
        assert (conflict["type"], conflict["code"]) == ("invalid_request_error", "conflict")

    def test_a_rejected_dataset_is_400(self, client: TestClient, auth: Auth) -> None:
        response = create(client, auth, "file:///etc/passwd")

        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_dataset"  # our code survives
        assert response.json()["error"]["param"] == "training_file"

    def test_openapi_documents_400_never_422(self, client: TestClient) -> None:
        schema = client.get("/openapi.json").json()

        statuses = {s for path in schema["paths"].values() for op in path.values() for s in op["responses"]}
        assert "422" not in statuses
        create_job = schema["paths"]["/v1/fine_tuning/jobs"]["post"]["responses"]
        assert create_job["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        detail = schema["components"]["schemas"]["ErrorDetail"]["properties"]
        assert set(detail) == {"code", "message", "param", "type"}
        assert {"/v1/fine_tuning/jobs/{job_id}/pause", "/v1/fine_tuning/jobs/{job_id}/resume"} <= set(
            schema["paths"]
        )
        assert "delete" in schema["paths"]["/v1/models/{model_id}"]


class TestCheckpointMetrics:
    def test_openai_names_beside_ours(self, client: TestClient, auth: Auth, job_id: str, db: Session) -> None:
        stored = {"train_loss": 0.5, "train_accuracy": 0.75, "val_loss": 0.4, "val_accuracy": 0.9, "epoch": 1}
        db.add(JobCheckpoint(id="ftckpt-p1", job_id=job_id, step=8, uri="file:///c/8", metrics=stored))
        mid_epoch = {"train_loss": 0.7}
        db.add(JobCheckpoint(id="ftckpt-p0", job_id=job_id, step=4, uri="file:///c/4", metrics=mid_epoch))
        db.commit()

        data = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=auth).json()["data"]

        assert data[0]["metrics"] == {
            **stored, "step": 8, "valid_loss": 0.4, "full_valid_loss": 0.4, "valid_mean_token_accuracy": 0.9,
            "full_valid_mean_token_accuracy": 0.9, "train_mean_token_accuracy": 0.75,
        }  # fmt: skip
        assert data[1]["metrics"] == {"step": 4, "train_loss": 0.7}  # no validation mid-epoch


class TestEvents:
    def test_types_stay_within_openais(
        self, client: TestClient, auth: Auth, job_id: str, db: Session
    ) -> None:
        add_event(db, job_id, "Checkpoint saved at step 2", type="checkpoint", data={"step": 2})
        add_event(db, job_id, "Step 2", type="metrics", data={"step": 2, "train_loss": 0.1})
        db.commit()

        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth).json()["data"]

        assert [e["type"] for e in events[:2]] == ["metrics", "message"]
        assert events[1]["data"] == {"kind": "checkpoint", "step": 2}
        assert {e["type"] for e in events} <= {"message", "metrics"}


def test_results_csv_one_row_per_step(client: TestClient, auth: Auth, job_id: str, db: Session) -> None:
    add_events(
        db, job_id,
        ("metrics", {"step": 1, "train_loss": 0.9, "lr": 0.001}),
        ("metrics", {"step": 2, "train_loss": 0.7}),
        ("metrics", {"epoch": 0, "step": 2, "train_loss": 0.8, "valid_loss": 0.6, "valid_accuracy": 0.5}),
        ("message", {"step": 3, "train_loss": 9.9}),
    )  # fmt: skip

    rows = list(csv.reader(io.StringIO(results_csv(db, job_id).decode())))

    assert rows == [
        ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"],
        ["1", "0.9", "", "", ""],
        ["2", "0.7", "", "0.6", "0.5"],  # the step's own loss, the epoch's validation
    ]


@pytest.fixture
def ft_job(db: Session, add: Any, cnn10: Path) -> tuple[Job, Adapter]:
    adapter = add(cnn10)
    job = Job(
        id="ftjob-parityjob", tenant_id=adapter.tenant_id, model="tiny-cnn", training_file="file-x",
        method={"method": "grft"}, suffix="d", status="succeeded", adapter_id=adapter.id, created_at=utcnow(),
    )  # fmt: skip
    db.add(job)
    adapter.job_id = job.id
    db.commit()
    return job, adapter


class TestAlias:
    def test_download_and_predict_by_model_id(
        self, client: TestClient, auth: Auth, ft_job: tuple[Job, Adapter], digit_pngs: list[bytes]
    ) -> None:
        job, adapter = ft_job
        body = {"inputs": [{"image": base64.b64encode(digit_pngs[0]).decode()}]}

        by_id = client.post(f"/v1/adapters/{adapter.id}/predict", json=body, headers=auth)
        by_model = client.post(f"/v1/adapters/{ft_id(job)}/predict", json=body, headers=auth)
        batched = client.post(
            "/v1/predictions",
            json={"items": [{"adapter": ft_id(job), "input": body["inputs"][0]}]},
            headers=auth,
        )

        assert by_id.status_code == 200, by_id.text
        assert by_model.json() == by_id.json() == batched.json()
        content = client.get(f"/v1/adapters/{ft_id(job)}/content", headers=auth)
        assert content.status_code == 200
        assert content.content == client.get(f"/v1/adapters/{adapter.id}/content", headers=auth).content

    def test_pin_by_model_id(self, client: TestClient, auth: Auth, ft_job: tuple[Job, Adapter]) -> None:
        pinned = client.post(f"/v1/inference/adapters/{ft_id(ft_job[0])}/pin", headers=auth)

        assert pinned.status_code == 200, pinned.text
        assert (pinned.json()["id"], pinned.json()["pinned"]) == (ft_job[1].id, True)

    def test_other_tenant_cannot_use_it(
        self, client: TestClient, other_auth: Auth, ft_job: tuple[Job, Adapter]
    ) -> None:
        assert client.get(f"/v1/adapters/{ft_id(ft_job[0])}/content", headers=other_auth).status_code == 404
        body = {"inputs": [{"text": "x"}]}
        assert (
            client.post(f"/v1/adapters/{ft_id(ft_job[0])}/predict", json=body, headers=other_auth).status_code
            == 404
        )


class TestContinue:
    def test_a_job_continues_a_fine_tuned_model(
        self, client: TestClient, auth: Auth, file_id: str, ft_job: tuple[Job, Adapter], db: Session
    ) -> None:
        job, adapter = ft_job

        response = create(client, auth, file_id, model=ft_id(job))

        assert response.status_code == 200, response.text
        shown = response.json()
        assert shown["model"] == ft_id(job)  # as asked; the row trains the base
        row = db.get(Job, shown["id"])
        assert row is not None
        assert row.model == "tiny-cnn"
        assert row.init_from is not None
        assert (row.init_from["adapter_id"], row.init_from["job_id"], row.init_from["step"]) == (
            adapter.id, job.id, None,
        )  # fmt: skip

    def test_another_tenants_model_is_not_found(
        self, client: TestClient, other_auth: Auth, ft_job: tuple[Job, Adapter]
    ) -> None:
        from tests.api.test_files import upload

        other_file = upload(client, other_auth).json()["id"]
        response = create(client, other_auth, other_file, model=ft_id(ft_job[0]))

        assert response.status_code == 404
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
            "model_not_found",
            "model",
        )

    def test_only_grft_continues(
        self, client: TestClient, auth: Auth, file_id: str, ft_job: tuple[Job, Adapter], db: Session
    ) -> None:
        lora = {"type": "lora", "lora": {"hyperparameters": {"lora_rank": 2}}}
        refused = create(client, auth, file_id, model=ft_id(ft_job[0]), method=lora)
        ft_job[1].method = "full"
        db.commit()
        not_grft = create(client, auth, file_id, model=ft_id(ft_job[0]))

        assert (refused.status_code, refused.json()["error"]["param"]) == (400, "method.type")
        assert (not_grft.status_code, not_grft.json()["error"]["param"]) == (400, "model")
