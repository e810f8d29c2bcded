"""``/v1/models``: the base models and the organization's fine-tuned models (OpenAI's Model objects),
retrieved by their ``ft:…`` id or adapter id, deleted (their adapter) by their owner only; base models
cannot be deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from domain.adapters.models import Adapter
from domain.auth.repository import tenant_by_name
from domain.db import utcnow
from domain.ids import new_id
from domain.jobs.models import Job

Auth = dict[str, str]


def fine_tuned(db: Session, adapter: Adapter, *, suffix: str | None = "digits") -> Job:
    """A succeeded job of the adapter's tenant that produced ``adapter``."""
    job = Job(
        id=new_id("ftjob"), tenant_id=adapter.tenant_id, model=adapter.base_model, training_file="file-x",
        method={"method": "grft"}, suffix=suffix, status="succeeded", adapter_id=adapter.id,
        created_at=utcnow(), finished_at=utcnow(),
    )  # fmt: skip
    db.add(job)
    adapter.job_id = job.id
    db.commit()
    return job


def model_id(job: Job) -> str:
    return f"ft:{job.model}:{job.tenant_id}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')}"


@pytest.fixture
def ft(db: Session, add: Any, cnn10: Path) -> tuple[Job, Adapter]:
    adapter = add(cnn10)
    return fine_tuned(db, adapter), adapter


class TestList:
    def test_base_models_then_the_organizations_fine_tuned_models(
        self, client: TestClient, auth: Auth, other_auth: Auth, ft: tuple[Job, Adapter]
    ) -> None:
        job, adapter = ft

        data = client.get("/v1/models", headers=auth).json()["data"]

        by_id = {m["id"]: m for m in data}
        assert by_id["tiny-cnn"]["owned_by"] == "grft"
        mine = by_id[model_id(job)]
        assert set(mine) >= {"id", "object", "created", "owned_by"}
        assert (mine["object"], mine["owned_by"], mine["parent"]) == ("model", job.tenant_id, "tiny-cnn")
        assert (mine["adapter_id"], mine["fine_tuning_job_id"]) == (adapter.id, job.id)
        assert (mine["modality"], mine["family"]) == ("image", "timm")
        assert mine["num_params"] == by_id["tiny-cnn"]["num_params"]
        others = [m["id"] for m in client.get("/v1/models", headers=other_auth).json()["data"]]
        assert model_id(job) not in others
        assert "tiny-cnn" in others

    def test_anonymous_is_401(self, client: TestClient) -> None:
        response = client.get("/v1/models")
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


class TestRetrieve:
    def test_by_model_id_and_by_adapter_id(
        self, client: TestClient, auth: Auth, ft: tuple[Job, Adapter]
    ) -> None:
        job, adapter = ft

        by_model = client.get(f"/v1/models/{model_id(job)}", headers=auth).json()
        by_adapter = client.get(f"/v1/models/{adapter.id}", headers=auth).json()

        assert by_model["id"] == model_id(job)
        assert by_adapter == by_model

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda m: m.replace(":digits:", ":other:"),  # another suffix
            lambda m: m.replace("ft:tiny-cnn:", "ft:tiny-bert:"),  # another base
            lambda m: m + ":ckpt-step-1",  # a checkpoint that does not exist
            lambda m: "ft:tiny-cnn:org::nothing",
        ],
    )
    def test_only_the_exact_id_resolves(
        self, client: TestClient, auth: Auth, ft: tuple[Job, Adapter], mangle: Any
    ) -> None:
        response = client.get(f"/v1/models/{mangle(model_id(ft[0]))}", headers=auth)

        assert response.status_code == 404
        assert (response.json()["error"]["code"], response.json()["error"]["type"]) == (
            "model_not_found", "not_found_error",
        )  # fmt: skip

    def test_other_tenant_is_404(self, client: TestClient, other_auth: Auth, ft: tuple[Job, Adapter]) -> None:
        assert client.get(f"/v1/models/{model_id(ft[0])}", headers=other_auth).status_code == 404
        assert client.get(f"/v1/models/{ft[1].id}", headers=other_auth).status_code == 404


class TestDelete:
    def test_deletes_the_adapter_and_keeps_the_job(
        self, client: TestClient, auth: Auth, ft: tuple[Job, Adapter], db: Session
    ) -> None:
        job, adapter = ft

        response = client.delete(f"/v1/models/{model_id(job)}", headers=auth)

        assert response.status_code == 200, response.text
        assert response.json() == {"id": model_id(job), "object": "model", "deleted": True}
        assert client.get(f"/v1/models/{model_id(job)}", headers=auth).status_code == 404
        assert client.get(f"/v1/adapters/{adapter.id}", headers=auth).status_code == 404
        shown = client.get(f"/v1/fine_tuning/jobs/{job.id}", headers=auth).json()
        assert shown["fine_tuned_model"] == model_id(job)  # the job still names what it made

    def test_base_model_is_403(self, client: TestClient, auth: Auth) -> None:
        response = client.delete("/v1/models/tiny-cnn", headers=auth)

        assert response.status_code == 403
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("permission_error", "model")
        assert "base models cannot be deleted" in error["message"]

    def test_other_tenants_model_is_404_and_kept(
        self, client: TestClient, auth: Auth, other_auth: Auth, ft: tuple[Job, Adapter]
    ) -> None:
        response = client.delete(f"/v1/models/{model_id(ft[0])}", headers=other_auth)

        assert response.status_code == 404
        assert client.get(f"/v1/models/{model_id(ft[0])}", headers=auth).status_code == 200

    def test_anonymous_is_401(self, client: TestClient, ft: tuple[Job, Adapter]) -> None:
        assert client.delete(f"/v1/models/{model_id(ft[0])}").status_code == 401


def test_suffixless_model_id_has_an_empty_segment(
    client: TestClient, auth: Auth, db: Session, add: Any, cnn10: Path
) -> None:
    job = fine_tuned(db, add(cnn10), suffix=None)
    tenant = tenant_by_name(db, "acme")
    assert tenant is not None

    shown = client.get(f"/v1/fine_tuning/jobs/{job.id}", headers=auth).json()

    assert shown["fine_tuned_model"] == f"ft:tiny-cnn:{tenant.id}::{job.id.removeprefix('ftjob-')}"
    assert client.get(f"/v1/models/{shown['fine_tuned_model']}", headers=auth).status_code == 200
