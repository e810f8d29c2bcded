"""``DELETE /v1/fine_tuning/jobs/{id}`` and the job quotas: a finished job goes with its events,
checkpoints and adapter (rows, files in the real artifact store, the inference cache's copy); the quotas
count unfinished jobs, and stored jobs until they are deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.inference.service import InferenceService
from domain.adapters.models import Adapter
from domain.artifacts import ArtifactStore, checkpoints_key, job_key
from domain.auth.repository import tenant_by_name
from domain.db import utcnow
from domain.ids import new_id
from domain.jobs.models import Job, JobCheckpoint, JobEvent
from domain.jobs.states import TERMINAL, UNFINISHED, JobStatus
from domain.settings import Settings
from tests.api.fixtures import store_adapter
from tests.api.test_files import upload
from tests.api.test_inference import b64, png, predict

Auth = dict[str, str]
JOBS = "/v1/fine_tuning/jobs"
GRFT = {"type": "grft", "grft": {"hyperparameters": {"k": 2, "n_epochs": 1}}}


def rows(db: Session, model: Any, job_id: str) -> int:
    column = model.id if model is Job else model.job_id
    return int(db.scalar(select(func.count()).select_from(model).where(column == job_id)) or 0)


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.artifact_url)


class StoredJobs:
    """Jobs written straight to the test's database and artifact store, and what is left of them."""

    def __init__(self, db: Session, store: ArtifactStore, tmp_path: Path) -> None:
        self.db, self.store, self.tmp_path = db, store, tmp_path

    def finished(self, status: str, tenant: str = "acme") -> Job:
        """A job in ``status`` with two events and two checkpoints, rows and folders in the store."""
        owner = tenant_by_name(self.db, tenant)
        assert owner is not None
        job = Job(
            id=new_id("ftjob"),
            tenant_id=owner.id,
            model="tiny-cnn",
            training_file="file-x",
            status=status,
            finished_at=utcnow() if status in TERMINAL else None,
        )
        self.db.add(job)
        self.db.flush()
        for step in (2, 4):
            folder = self.tmp_path / job.id / f"step-{step:06d}"
            folder.mkdir(parents=True)
            (folder / "state.json").write_text(f'{{"step": {step}}}')
            (folder / "weights.safetensors").write_bytes(b"\0" * 64)
            uri = self.store.put_folder(f"{checkpoints_key(job.id)}/{folder.name}", folder)
            self.db.add(JobCheckpoint(id=new_id("ftckpt"), job_id=job.id, step=step, uri=uri))
            self.db.add(
                JobEvent(id=new_id("ftevent"), job_id=job.id, message=f"Checkpoint saved at step {step}")
            )
        self.db.commit()
        return job

    def rows(self, job_id: str) -> list[int]:
        """How many rows of the job, its events and its checkpoints remain."""
        return [rows(self.db, model, job_id) for model in (Job, JobEvent, JobCheckpoint)]


@pytest.fixture
def jobs(db: Session, store: ArtifactStore, tmp_path: Path) -> StoredJobs:
    return StoredJobs(db, store, tmp_path)


class TestDeleteJob:
    def test_succeeded_job_goes_with_its_adapter(
        self,
        client: TestClient,
        auth: Auth,
        db: Session,
        settings: Settings,
        store: ArtifactStore,
        jobs: StoredJobs,
        cnn10: Path,
        other_key: str,
        app: Any,
    ) -> None:
        job = jobs.finished(JobStatus.SUCCEEDED)
        adapter = store_adapter(db, settings, cnn10, job_id=job.id)
        job.adapter_id = adapter.id
        db.commit()
        kept = jobs.finished(JobStatus.SUCCEEDED)
        assert predict(client, adapter.id, [{"image": b64(png())}], auth).status_code == 200
        inference: InferenceService = app.state.services.inference
        assert inference.cached_ids() == [adapter.id]

        response = client.delete(f"{JOBS}/{job.id}", headers=auth)

        assert response.status_code == 200
        assert response.json() == {
            "id": job.id,
            "object": "fine_tuning.job.deleted",
            "deleted": True,
            "adapter_id": adapter.id,
        }
        assert jobs.rows(job.id) == [0, 0, 0]
        assert db.scalar(select(func.count()).select_from(Adapter).where(Adapter.id == adapter.id)) == 0
        assert not store.exists(job_key(job.id))
        assert not store.exists(f"adapters/{adapter.id}")
        assert inference.cached_ids() == []
        assert predict(client, adapter.id, [{"image": b64(png())}], auth).status_code == 404
        assert client.get(f"{JOBS}/{job.id}", headers=auth).status_code == 404
        assert client.get(f"/v1/adapters/{adapter.id}", headers=auth).status_code == 404
        # The tenant's other job is untouched.
        assert jobs.rows(kept.id) == [1, 2, 2]
        assert store.exists(f"{checkpoints_key(kept.id)}/step-000004/state.json")

    @pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.CANCELLED])
    def test_failed_or_cancelled_job(
        self, client: TestClient, auth: Auth, jobs: StoredJobs, status: str
    ) -> None:
        job = jobs.finished(status)
        assert jobs.store.exists(checkpoints_key(job.id))

        response = client.delete(f"{JOBS}/{job.id}", headers=auth)

        assert response.status_code == 200
        assert response.json()["adapter_id"] is None
        assert jobs.rows(job.id) == [0, 0, 0]
        assert not jobs.store.exists(job_key(job.id))

    def test_twice_is_404(self, client: TestClient, auth: Auth, jobs: StoredJobs) -> None:
        job = jobs.finished(JobStatus.FAILED)
        assert client.delete(f"{JOBS}/{job.id}", headers=auth).status_code == 200

        response = client.delete(f"{JOBS}/{job.id}", headers=auth)

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"

    @pytest.mark.parametrize("status", UNFINISHED)
    def test_unfinished_job_is_409(
        self, client: TestClient, auth: Auth, jobs: StoredJobs, status: str
    ) -> None:
        job = jobs.finished(status)

        response = client.delete(f"{JOBS}/{job.id}", headers=auth)

        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "job_not_finished"
        assert f"is {status}" in error["message"]
        assert jobs.rows(job.id) == [1, 2, 2]
        assert jobs.store.exists(f"{checkpoints_key(job.id)}/step-000002/state.json")

    def test_anonymous(self, client: TestClient, auth: Auth, db: Session, jobs: StoredJobs) -> None:
        job = jobs.finished(JobStatus.FAILED)

        response = client.delete(f"{JOBS}/{job.id}")

        assert response.status_code == 401
        assert rows(db, Job, job.id) == 1
        assert jobs.store.exists(checkpoints_key(job.id))

    def test_other_tenant(self, client: TestClient, auth: Auth, other_auth: Auth, jobs: StoredJobs) -> None:
        job = jobs.finished(JobStatus.FAILED)

        response = client.delete(f"{JOBS}/{job.id}", headers=other_auth)

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert jobs.rows(job.id) == [1, 2, 2]
        assert jobs.store.exists(checkpoints_key(job.id))
        assert client.get(f"{JOBS}/{job.id}", headers=auth).status_code == 200


# --- quotas -------------------------------------------------------------------------------------------


@pytest.fixture
def quiet_broker(settings: Settings) -> None:
    # Nothing listens there: the created jobs stay in the database, no message reaches the shared Redis.
    settings.broker_url = "redis://127.0.0.1:1/15"


def create(client: TestClient, auth: Auth, file_id: str) -> Any:
    return client.post(
        JOBS, headers=auth, json={"model": "tiny-bert", "training_file": file_id, "method": GRFT}
    )


def finish(db: Session, job_id: str, status: str = JobStatus.CANCELLED) -> None:
    job = db.get_one(Job, job_id)
    job.status, job.finished_at = status, utcnow()
    db.commit()


@pytest.mark.usefixtures("quiet_broker")
class TestQuotas:
    def test_active_quota_counts_unfinished_jobs_only(
        self, client: TestClient, auth: Auth, db: Session, settings: Settings
    ) -> None:
        settings.max_active_jobs_per_tenant = 2
        file_id = upload(client, auth).json()["id"]
        first, _ = (create(client, auth, file_id).json()["id"] for _ in range(2))

        refused = create(client, auth, file_id)

        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("quota_exceeded", "max_active_jobs")
        assert "2 jobs validating, queued or running" in error["message"]
        finish(db, first)
        assert create(client, auth, file_id).status_code == 200

    def test_stored_jobs_are_freed_by_deleting(
        self, client: TestClient, auth: Auth, db: Session, settings: Settings
    ) -> None:
        settings.max_jobs_per_tenant = 2
        file_id = upload(client, auth).json()["id"]
        jobs = [create(client, auth, file_id).json()["id"] for _ in range(2)]
        for job_id in jobs:
            finish(db, job_id, JobStatus.FAILED)

        refused = create(client, auth, file_id)

        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("quota_exceeded", "max_jobs")
        assert "DELETE /v1/fine_tuning/jobs/{id}" in error["message"]
        assert client.delete(f"{JOBS}/{jobs[0]}", headers=auth).status_code == 200
        assert create(client, auth, file_id).status_code == 200

    def test_quota_is_per_tenant(
        self, client: TestClient, auth: Auth, other_auth: Auth, settings: Settings
    ) -> None:
        settings.max_active_jobs_per_tenant = 1
        assert create(client, auth, upload(client, auth).json()["id"]).status_code == 200

        assert create(client, other_auth, upload(client, other_auth).json()["id"]).status_code == 200

    def test_anonymous(self, client: TestClient, auth: Auth) -> None:
        assert create(client, {}, upload(client, auth).json()["id"]).status_code == 401
