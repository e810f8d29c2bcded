"""Jobs per state and queue depths, read from Postgres and Redis when ``/metrics`` is scraped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from domain.db import session_scope
from domain.jobs.models import Job
from domain.jobs.states import JobStatus
from domain.queue import RUN_JOB, control_queue, publish
from tests.conftest import insert_tenant_job
from tests.observability.api.helpers import samples, value


@pytest.fixture
def queue(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A queue of this test's own on the test Redis database, emptied afterwards."""
    settings.queue = f"obs-{uuid.uuid4().hex[:8]}"
    yield settings.queue
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(settings.queue, control_queue(settings))
    client.close()


@pytest.fixture
def committed_jobs(settings) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """Jobs committed for real (the scrape reads through its own connection), deleted afterwards."""
    ids: list[str] = []
    yield ids
    with session_scope(settings.database_url) as session:
        for job_id in ids:
            session.delete(session.get_one(Job, job_id))


class TestJobsByState:
    def test_every_state_is_exported(self, client) -> None:
        states = {labels["state"] for labels, _ in samples(client, "grft_jobs")}
        assert states == {status.value for status in JobStatus}

    def test_counts_follow_the_database(self, client, settings, committed_jobs) -> None:
        before = {s: value(client, "grft_jobs", state=s) for s in ("queued", "running", "failed")}
        for status in ("queued", "queued", "running", "failed"):
            committed_jobs.append(
                insert_tenant_job(settings, "obs", model="tiny-bert", training_file="file-x", status=status)
            )
        after = {s: value(client, "grft_jobs", state=s) for s in ("queued", "running", "failed")}
        assert {s: after[s] - before[s] for s in after} == {"queued": 2, "running": 1, "failed": 1}
        assert value(client, "grft_scrape_source_up", source="database") == 1

    def test_database_down_is_reported_not_fatal(self, client, settings) -> None:
        settings.database_url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
        assert value(client, "grft_scrape_source_up", source="database") == 0
        assert samples(client, "grft_jobs") == []
        assert value(client, "grft_scrape_source_up", source="broker") == 1


class TestQueueDepth:
    def test_waiting_messages_per_queue(self, client, settings, queue: str) -> None:
        assert value(client, "grft_queue_depth", queue=queue) == 0
        for job_id in ("ftjob-a", "ftjob-b", "ftjob-c"):
            assert publish(settings, RUN_JOB, job_id)
        assert value(client, "grft_queue_depth", queue=queue) == 3
        assert value(client, "grft_queue_depth", queue=control_queue(settings)) == 0

    def test_broker_down_is_reported(self, client, settings) -> None:
        settings.broker_url = "redis://127.0.0.1:1/0"
        assert value(client, "grft_scrape_source_up", source="broker") == 0
        assert samples(client, "grft_queue_depth") == []

    def test_embedded_broker_counts_its_folder(self, client, settings, tmp_path) -> None:
        settings.broker_url, settings.home = "filesystem://", tmp_path / "home"
        assert publish(settings, RUN_JOB, "ftjob-a")
        assert value(client, "grft_queue_depth", queue=settings.queue) == 1
