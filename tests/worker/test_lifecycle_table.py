"""The transition table against the code that applies it: every (state, trigger) pair, on a real Postgres.

A pair the table lists moves the job to the table's state; any other pair is refused and leaves the
row exactly as it was (status, attempt, lease, heartbeat, end time).
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from domain.adapters.models import Adapter
from domain.db import session_scope, utcnow
from domain.errors import Conflict
from domain.ids import new_id
from domain.jobs import lifecycle
from domain.jobs.lifecycle import Lease, LeaseLost
from domain.jobs.models import Job
from domain.jobs.states import (
    INITIAL,
    TERMINAL,
    TRANSITIONS,
    UNFINISHED,
    JobStatus,
    TransitionRefused,
    Trigger,
    next_status,
    sources,
)
from domain.settings import Settings
from tests.worker.conftest import MakeJob, get_job

TOKEN = "walk-token"
LONG_AGO = timedelta(hours=1)


def apply(settings: Settings, trigger: Trigger, job_id: str, tenant_id: str) -> bool:
    """Apply ``trigger`` through the one lifecycle function that owns it; whether it took effect."""
    lease = Lease(job_id, TOKEN, 1)
    with session_scope(settings.database_url) as session:
        match trigger:
            case Trigger.CLAIM_VALIDATION:
                return lifecycle.claim_validation(session, job_id, settings.lease_seconds) is not None
            case Trigger.FILES_VALID:
                return lifecycle.files_valid(session, lease, "files ok", {})
            case Trigger.CLAIM:
                return lifecycle.claim(session, job_id) is not None
            case Trigger.HEARTBEAT | Trigger.CHECKPOINT:
                try:
                    if trigger == Trigger.HEARTBEAT:
                        lifecycle.heartbeat(session, lease, steps_completed=1)
                    else:
                        lifecycle.checkpoint(session, lease, 2, "file:///ckpt", {}, [2])
                except LeaseLost:
                    return False
                return True
            case Trigger.SUCCEED:
                adapter = Adapter(
                    id=new_id("adapter"), tenant_id=tenant_id, job_id=job_id, base_model="tiny-bert",
                    method="grft", uri="file:///adapter", bytes=1,
                )  # fmt: skip
                return lifecycle.succeed(session, lease, adapter, {"loss": 0.1}, 10)
            case Trigger.FAIL:
                return lifecycle.fail(session, lease, code="error", message="boom", param=None)
            case Trigger.REQUEUE:
                return lifecycle.requeue(session, lease)
            case Trigger.CANCEL:
                try:
                    lifecycle.cancel(session, tenant_id, job_id)
                except Conflict:
                    return False
                return True
            case Trigger.ACK_CANCEL:
                return lifecycle.ack_cancel(session, lease)
            case Trigger.REPUBLISH:
                due = lifecycle.republish(session, lease_seconds=settings.lease_seconds)
                return any(task_job == job_id for _, task_job in due)
            case Trigger.PAUSE | Trigger.RESUME:
                try:
                    if trigger == Trigger.PAUSE:
                        lifecycle.pause(session, tenant_id, job_id)
                    else:
                        lifecycle.resume(session, tenant_id, job_id)
                except Conflict:
                    return False
                return True
            case Trigger.ACK_PAUSE:
                return lifecycle.ack_pause(session, lease, step=2)
    raise AssertionError(f"no function applies {trigger}")


def row(job: Job) -> tuple[Any, ...]:
    return (job.status, job.attempt, job.lease_token, job.heartbeat_at, job.finished_at)


@pytest.mark.parametrize(
    ("status", "trigger"), list(itertools.product(JobStatus, Trigger)), ids=lambda value: str(value)
)
def test_every_pair_follows_the_table(
    settings: Settings, make_job: MakeJob, tenant: str, status: JobStatus, trigger: Trigger
) -> None:
    # A held lease whose holder looks dead and a message that looks lost: each trigger's own guard
    # (a live validator, attempts left, a long wait) is then met, so only the table decides.
    job_id = make_job(
        "file-x",
        status=status,
        attempt=1,
        max_attempts=3,
        lease_token=TOKEN,
        heartbeat_at=utcnow() - LONG_AGO,
        enqueued_at=utcnow() - LONG_AGO,
    )
    before = get_job(settings, job_id)
    took = apply(settings, trigger, job_id, tenant)
    after = get_job(settings, job_id)
    target = TRANSITIONS.get((status, trigger))
    if target is None:
        assert not took
        assert row(after) == row(before)
    else:
        assert took
        assert after.status == target
        assert (after.finished_at is not None) == (target in TERMINAL)


class TestTable:
    def test_states_partition_into_unfinished_and_terminal(self) -> None:
        assert set(TERMINAL) == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
        assert set(UNFINISHED) | set(TERMINAL) == set(JobStatus)
        assert INITIAL in UNFINISHED

    def test_every_unfinished_state_can_reach_an_end(self) -> None:
        reachable, frontier = {INITIAL}, [INITIAL]
        while frontier:
            here = frontier.pop()
            for (source, _), target in TRANSITIONS.items():
                if source == here and target not in reachable:
                    reachable.add(target)
                    frontier.append(target)
        assert reachable == set(JobStatus)
        for status in UNFINISHED:
            assert any(src == status and dst in TERMINAL for (src, _), dst in TRANSITIONS.items())

    def test_every_trigger_applies_somewhere(self) -> None:
        assert all(sources(trigger) for trigger in Trigger)

    def test_refused_pair_raises(self) -> None:
        assert next_status("running", Trigger.CANCEL) == JobStatus.CANCELLING
        with pytest.raises(TransitionRefused, match="a succeeded job cannot cancel"):
            next_status(JobStatus.SUCCEEDED, Trigger.CANCEL)


def test_a_heartbeat_cannot_carry_the_state(settings: Settings, make_job: MakeJob) -> None:
    job_id = make_job("file-x", status=JobStatus.RUNNING, attempt=1, lease_token=TOKEN, heartbeat_at=utcnow())
    with session_scope(settings.database_url) as session, pytest.raises(ValueError, match="heartbeat"):
        lifecycle.heartbeat(session, Lease(job_id, TOKEN, 1), status=JobStatus.SUCCEEDED)
    assert get_job(settings, job_id).status == JobStatus.RUNNING
