"""Job-state transitions on a real Postgres: the claim is a compare-and-set, a stale lease writes nothing,
and the reconciler repairs lost messages and dead workers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from api.cli import upgrade_database
from domain.adapters.models import Adapter
from domain.db import get_engine, session_scope, utcnow
from domain.jobs import events as job_events
from domain.jobs import lifecycle as state
from domain.jobs.lifecycle import Lease, LeaseLost
from domain.jobs.models import JobCheckpoint, JobEvent
from domain.queue import RUN_JOB, VALIDATE_JOB
from domain.settings import Settings
from tests.worker.conftest import MakeJob, get_job, set_job
from worker import reconcile as reconciler

LONG_AGO = timedelta(hours=1)


@pytest.fixture(params=["postgres", "sqlite"])
def settings(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Every transition on both databases: Postgres (distributed) and SQLite (embedded)."""
    if request.param == "postgres":
        yield settings
        return
    sqlite = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'grft.db'}"})
    upgrade_database(sqlite)
    yield sqlite
    get_engine(sqlite.database_url).dispose()


def claim(settings: Settings, job_id: str) -> Lease | None:
    with session_scope(settings.database_url) as session:
        return state.claim(session, job_id)


def reconcile(settings: Settings, *job_ids: str) -> list[tuple[str, str]]:
    """One reconciler pass; the tasks it published for ``job_ids`` (other tests' jobs share the DB)."""
    sent: list[tuple[str, str]] = []
    reconciler.reconcile(settings, lambda name, job_id: sent.append((name, job_id)))
    return [(name, job_id) for name, job_id in sent if job_id in job_ids]


def events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


class TestClaim:
    def test_second_claim_loses(self, settings: Settings, make_job: MakeJob) -> None:
        job_id = make_job("file-x", status="queued")
        first, second = claim(settings, job_id), claim(settings, job_id)
        assert first is not None
        assert first.attempt == 1
        assert second is None
        job = get_job(settings, job_id)
        assert (job.status, job.attempt, job.lease_token) == ("running", 1, first.token)
        assert job.started_at is not None

    def test_concurrent_claims_one_wins(self, settings: Settings, make_job: MakeJob) -> None:
        job_id = make_job("file-x", status="queued")
        barrier, results = threading.Barrier(4), []

        def contend() -> None:
            barrier.wait()
            results.append(claim(settings, job_id))

        threads = [threading.Thread(target=contend) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert get_job(settings, job_id).attempt == 1

    def test_only_queued_jobs_are_claimed(self, settings: Settings, make_job: MakeJob) -> None:
        for status in ("validating_files", "cancelling", "succeeded", "cancelled"):
            assert claim(settings, make_job("file-x", status=status)) is None

    def test_validation_claim_skips_a_live_validator(self, settings: Settings, make_job: MakeJob) -> None:
        job_id = make_job("file-x")
        with session_scope(settings.database_url) as session:
            assert state.claim_validation(session, job_id, settings.lease_seconds) is not None
            assert state.claim_validation(session, job_id, settings.lease_seconds) is None
        set_job(settings, job_id, heartbeat_at=utcnow() - LONG_AGO)
        with session_scope(settings.database_url) as session:
            assert state.claim_validation(session, job_id, settings.lease_seconds) is not None


class TestFencing:
    def test_stale_lease_changes_nothing(self, settings: Settings, make_job: MakeJob) -> None:
        job_id = make_job("file-x", status="queued")
        old = claim(settings, job_id)
        assert old is not None
        set_job(settings, job_id, heartbeat_at=utcnow() - LONG_AGO)
        assert reconcile(settings, job_id) == [(RUN_JOB, job_id)]
        new = claim(settings, job_id)
        assert new is not None
        assert new.attempt == 2
        before = len(events(settings, job_id))

        with session_scope(settings.database_url) as session, pytest.raises(LeaseLost):
            state.heartbeat(session, old, steps_completed=99)
        with session_scope(settings.database_url) as session, pytest.raises(LeaseLost):
            state.checkpoint(session, old, 4, "file:///x", {}, [4])
        with session_scope(settings.database_url) as session:
            adapter = Adapter(
                id="adapter-stale", tenant_id=get_job(settings, job_id).tenant_id, job_id=job_id,
                base_model="tiny-bert", method="grft", uri="file:///x", bytes=1,
            )  # fmt: skip
            assert state.complete(session, old, adapter, {}, 1) is None
            assert not state.fail(session, old, code="error", message="stale", param=None)
            assert state.end_attempt(session, old, code="error", message="x", param=None, retry=True) is None
            assert not state.requeue(session, old)

        job = get_job(settings, job_id)
        assert (job.status, job.lease_token, job.steps_completed) == ("running", new.token, 0)
        assert len(events(settings, job_id)) == before
        with session_scope(settings.database_url) as session:
            assert session.get(Adapter, "adapter-stale") is None
            assert session.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)).all() == []

    def test_cancel_request_is_seen_and_settled(self, settings: Settings, make_job: MakeJob) -> None:
        job_id = make_job("file-x", status="queued")
        lease = claim(settings, job_id)
        assert lease is not None
        set_job(settings, job_id, status="cancelling")
        with session_scope(settings.database_url) as session:
            assert state.heartbeat(session, lease) == "cancelling"
            assert state.ack_cancel(session, lease)
        job = get_job(settings, job_id)
        assert job.status == "cancelled"
        assert job.finished_at is not None

    def test_failed_attempts_retry_then_fail(self, settings: Settings, make_job: MakeJob) -> None:
        job_id = make_job("file-x", status="queued", max_attempts=2)
        outcomes = []
        for _ in range(2):
            lease = claim(settings, job_id)
            assert lease is not None
            with session_scope(settings.database_url) as session:
                outcomes.append(
                    state.end_attempt(session, lease, code="error", message="boom", param=None, retry=True)
                )
        assert outcomes == ["queued", "failed"]
        job = get_job(settings, job_id)
        assert job.error == {"code": "error", "message": "boom", "param": None}
        assert job.attempt == 2


class TestReconcile:
    def test_rescues_a_running_job_with_a_stale_heartbeat(
        self, settings: Settings, make_job: MakeJob
    ) -> None:
        job_id = make_job("file-x", status="queued")
        assert claim(settings, job_id) is not None
        assert reconcile(settings, job_id) == []  # its heartbeat is fresh
        set_job(settings, job_id, heartbeat_at=utcnow() - LONG_AGO)
        assert reconcile(settings, job_id) == [(RUN_JOB, job_id)]
        job = get_job(settings, job_id)
        assert (job.status, job.lease_token, job.attempt) == ("queued", None, 1)
        assert events(settings, job_id)[-1].level == "warning"

    def test_fails_a_stale_job_after_its_last_attempt(self, settings: Settings, make_job: MakeJob) -> None:
        job_id = make_job("file-x", status="queued", max_attempts=1)
        assert claim(settings, job_id) is not None
        set_job(settings, job_id, heartbeat_at=utcnow() - LONG_AGO)
        assert reconcile(settings, job_id) == []
        job = get_job(settings, job_id)
        assert job.status == "failed"
        assert job.error is not None
        assert job.error["code"] == "error"
        assert job.finished_at is not None

    def test_republishes_a_queued_job_once_a_minute(self, settings: Settings, make_job: MakeJob) -> None:
        stuck = make_job("file-x", status="queued", enqueued_at=utcnow() - timedelta(minutes=2))
        fresh = make_job("file-x", status="queued")
        assert reconcile(settings, stuck, fresh) == [(RUN_JOB, stuck)]
        assert reconcile(settings, stuck, fresh) == []  # enqueued_at was bumped

    def test_republishes_validation_without_a_live_validator(
        self, settings: Settings, make_job: MakeJob
    ) -> None:
        old = utcnow() - timedelta(minutes=2)
        lost = make_job("file-x", enqueued_at=old)
        busy = make_job("file-x", enqueued_at=old, lease_token="someone", heartbeat_at=utcnow())
        assert reconcile(settings, lost, busy) == [(VALIDATE_JOB, lost)]

    def test_finishes_a_cancel_that_no_worker_holds(self, settings: Settings, make_job: MakeJob) -> None:
        job_id = make_job("file-x", status="cancelling")
        reconcile(settings, job_id)
        assert get_job(settings, job_id).status == "cancelled"


def test_clean_json_drops_non_finite_numbers() -> None:
    assert job_events.clean_json({"a": [1.0, float("nan")], "b": {"c": float("inf")}}) == {
        "a": [1.0, None],
        "b": {"c": None},
    }
