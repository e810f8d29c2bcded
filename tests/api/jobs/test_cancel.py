"""``POST /v1/fine_tuning/jobs/{id}/cancel``: a queued job is cancelled, a running one asked to stop, a
finished one refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.api.jobs.helpers import Auth, set_job


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
