"""``GET /v1/fine_tuning/jobs/{id}/events``: pages newest first, and the event stream of a finished job."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.api.jobs.helpers import Auth, add_events, set_job


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
