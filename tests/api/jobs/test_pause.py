"""``POST /v1/fine_tuning/jobs/{id}/pause`` and ``…/resume``: a queued job pauses at once, a running one
is asked to stop after its next checkpoint (``pausing``); resuming queues a paused job again and sends
its run. (A worker honouring a pause is tested in ``tests/worker/test_pause.py``.)"""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from domain.jobs.models import Job
from domain.queue import RUN_JOB
from domain.settings import Settings
from tests.api.jobs.helpers import Auth, published, set_job


def post(client: TestClient, auth: Auth, job_id: str, action: str) -> dict:
    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/{action}", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


class TestPause:
    @pytest.mark.parametrize(
        ("before", "after"),
        [("queued", "paused"), ("running", "pausing"), ("paused", "paused"), ("pausing", "pausing")],
    )
    def test_pauses(
        self, client: TestClient, auth: Auth, job_id: str, db: Session, before: str, after: str
    ) -> None:
        set_job(db, job_id, status=before)

        job = post(client, auth, job_id, "pause")

        assert job["status"] == after
        assert job["finished_at"] is None
        if before != after:
            events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth).json()["data"]
            assert events[0]["message"].startswith("Job paused" if after == "paused" else "Pause requested")
            assert events[0]["type"] == "message"

    @pytest.mark.parametrize("status", ["validating_files", "cancelling", "succeeded", "failed", "cancelled"])
    def test_refused_where_there_is_nothing_to_pause(
        self, client: TestClient, auth: Auth, job_id: str, db: Session, status: str
    ) -> None:
        set_job(db, job_id, status=status)

        response = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth)

        assert response.status_code == 409
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert db.get(Job, job_id).status == status  # type: ignore[union-attr]


class TestResume:
    def test_paused_job_is_queued_and_its_run_sent(
        self,
        client: TestClient,
        auth: Auth,
        job_id: str,
        db: Session,
        settings: Settings,
        broker: redis.Redis,
    ) -> None:
        set_job(db, job_id, status="queued")
        post(client, auth, job_id, "pause")
        broker.flushdb()

        job = post(client, auth, job_id, "resume")

        assert job["status"] == "queued"
        assert published(broker, settings.queue) == [(RUN_JOB, [job_id])]

    def test_pausing_job_keeps_running(
        self,
        client: TestClient,
        auth: Auth,
        job_id: str,
        db: Session,
        settings: Settings,
        broker: redis.Redis,
    ) -> None:
        set_job(db, job_id, status="running")
        post(client, auth, job_id, "pause")
        broker.flushdb()

        assert post(client, auth, job_id, "resume")["status"] == "running"
        assert published(broker, settings.queue) == []  # its worker never stopped

    @pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
    def test_only_a_paused_job_resumes(
        self, client: TestClient, auth: Auth, job_id: str, db: Session, status: str
    ) -> None:
        set_job(db, job_id, status=status)

        response = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth)

        assert response.status_code == 409
        assert "nothing to resume" in response.json()["error"]["message"]

    def test_a_paused_job_can_be_cancelled(
        self, client: TestClient, auth: Auth, job_id: str, db: Session
    ) -> None:
        set_job(db, job_id, status="queued")
        post(client, auth, job_id, "pause")

        job = post(client, auth, job_id, "cancel")

        assert job["status"] == "cancelled"
        assert job["finished_at"] is not None
