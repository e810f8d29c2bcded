"""``GET /v1/fine_tuning/jobs`` and ``GET /v1/fine_tuning/jobs/{id}``: tenant-scoped pages and filters, and
one job's progress and result."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.api.jobs.helpers import Auth, create, set_job


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

        short = job_id.removeprefix("ftjob-")
        assert (job["status"], job["fine_tuned_model"], job["adapter_id"]) == (
            "succeeded",
            f"ft:tiny-bert:{job['organization_id']}::{short}",  # OpenAI's form; the adapter id is an alias
            "adapter-x",
        )
        assert job["progress"]["steps_completed"] == 10
        assert job["trainable_params"] == 1234
        assert job["finished_at"] == int(finished.timestamp())
