"""The only code that changes a job's status, attempt, lease or heartbeat: it applies ``states.TRANSITIONS``.

Each move is one compare-and-set UPDATE whose ``WHERE status IN (…)`` and new status come from the
table, so no function here can make a move the table does not list. A worker owns a job through a
``Lease``: a claim sets a fresh ``lease_token`` and every later write names it, so a worker that lost its
lease (the reconciler re-queued the job, another worker claimed it) changes nothing. Functions take a
session and never commit: the caller's ``session_scope`` commits once, and publishes only after that.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Update, case, delete, func, or_, select, update
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.errors import Conflict, NotFound
from domain.ids import new_id
from domain.jobs.events import add_event, clean_json
from domain.jobs.states import TERMINAL, TRANSITIONS, JobStatus, Trigger, next_status, sources

# Through domain.models, every mapped class is registered before the first flush (foreign keys resolve).
from domain.models import Adapter, Job, JobCheckpoint
from domain.queue import RUN_JOB, VALIDATE_JOB
from domain.webhooks.outbox import job_finished

Publish = Callable[[str, str], object]
"""``publish(task_name, job_id)``: sends a task by name (after the commit that made it due)."""

# A queued job whose message may have been lost is republished at most once per this many seconds.
REPUBLISH_AFTER_S = 60.0

_SYNC = {"synchronize_session": False}
# The columns a heartbeat may carry along.
_PROGRESS = frozenset({"steps_completed", "total_steps", "seconds_remaining", "progress"})


@dataclass(frozen=True)
class Lease:
    """Proof of ownership of a job: every fenced write names ``token``."""

    job_id: str
    token: str
    attempt: int


class LeaseLost(Exception):
    """The job is no longer this worker's (re-queued, claimed elsewhere, or ended): stop writing."""


# --- applying the table -----------------------------------------------------------------------------


def _move(trigger: Trigger, *where: Any, among: tuple[JobStatus, ...] | None = None, **values: Any) -> Update:
    """An UPDATE of the jobs in a state ``trigger`` applies to (``among`` narrows them) that sets each
    one's status to the table's target; self-loops leave the status column alone."""
    allowed = sources(trigger) if among is None else among
    targets = {status: next_status(status, trigger) for status in allowed}
    moved = {s: t for s, t in targets.items() if s != t}
    if len(set(moved.values())) == 1 and len(moved) == len(targets):
        values["status"] = next(iter(moved.values()))
    elif moved:
        values["status"] = case(moved, value=Job.status, else_=Job.status)
    return update(Job).where(Job.status.in_(allowed), *where).values(**values)


def _owned(lease: Lease) -> list[ColumnElement[bool]]:
    return [Job.id == lease.job_id, Job.lease_token == lease.token]


def _apply(session: Session, stmt: Update) -> JobStatus | None:
    """Run ``stmt``; the job's status afterwards, or None when no row matched."""
    row = session.execute(stmt.returning(Job.status), execution_options=_SYNC).first()
    return None if row is None else JobStatus(row[0])


def _released(now: datetime) -> dict[str, Any]:
    """Back to the queue: the lease is void, and the reconciler times the wait from now."""
    return {"enqueued_at": now, "lease_token": None, "heartbeat_at": None}


def _ended(now: datetime) -> dict[str, Any]:
    return {"finished_at": now, "heartbeat_at": now, "seconds_remaining": None}


# --- claims -----------------------------------------------------------------------------------------


def claim_validation(session: Session, job_id: str, lease_seconds: float) -> Lease | None:
    """Take a ``validating_files`` job that no live validator holds; None when there is none."""
    now, token = utcnow(), uuid.uuid4().hex
    free = or_(
        Job.lease_token.is_(None),
        Job.heartbeat_at.is_(None),
        Job.heartbeat_at < now - timedelta(seconds=lease_seconds),
    )
    stmt = _move(Trigger.CLAIM_VALIDATION, Job.id == job_id, free, lease_token=token, heartbeat_at=now)
    row = session.execute(stmt.returning(Job.attempt), execution_options=_SYNC).first()
    return None if row is None else Lease(job_id, token, int(row[0]))


def claim(session: Session, job_id: str) -> Lease | None:
    """queued → running, bumping ``attempt`` under a new token; None when another worker has it."""
    now, token = utcnow(), uuid.uuid4().hex
    stmt = _move(
        Trigger.CLAIM,
        Job.id == job_id,
        attempt=Job.attempt + 1,
        lease_token=token,
        heartbeat_at=now,
        started_at=func.coalesce(Job.started_at, now),
    )
    row = session.execute(stmt.returning(Job.attempt), execution_options=_SYNC).first()
    return None if row is None else Lease(job_id, token, int(row[0]))


# --- writes under a lease ---------------------------------------------------------------------------


def heartbeat(session: Session, lease: Lease, **progress: Any) -> JobStatus:
    """Heartbeat (plus any progress columns) under the lease; returns the job's status, which tells
    the holder whether a cancel was asked.

    Raises:
        LeaseLost: the token no longer owns the job, or the job has ended.
    """
    if not progress.keys() <= _PROGRESS:  # the state, attempt and lease move only through the table
        raise ValueError(f"a heartbeat writes only {sorted(_PROGRESS)}, not {sorted(progress)}")
    status = _apply(session, _move(Trigger.HEARTBEAT, *_owned(lease), heartbeat_at=utcnow(), **progress))
    if status is None:
        raise LeaseLost(lease.job_id)
    return status


def files_valid(session: Session, lease: Lease, message: str, data: dict[str, Any]) -> bool:
    """validating_files → queued, releasing the validation lease (a run claims afresh)."""
    if _apply(session, _move(Trigger.FILES_VALID, *_owned(lease), **_released(utcnow()))) is None:
        return False
    add_event(session, lease.job_id, message, data=data)
    return True


def checkpoint(
    session: Session, lease: Lease, step: int, uri: str, metrics: dict[str, Any], keep_steps: list[int]
) -> JobStatus:
    """Replace the job's checkpoint rows by those of ``keep_steps`` plus ``step``; returns the status.

    Raises:
        LeaseLost: the lease no longer holds.
    """
    status = _apply(session, _move(Trigger.CHECKPOINT, *_owned(lease), heartbeat_at=utcnow()))
    if status is None:
        raise LeaseLost(lease.job_id)
    session.execute(
        delete(JobCheckpoint).where(
            JobCheckpoint.job_id == lease.job_id,
            or_(JobCheckpoint.step == step, JobCheckpoint.step.not_in(keep_steps)),
        )
    )
    checkpoint_id = new_id("ftckpt")
    session.add(
        JobCheckpoint(
            id=checkpoint_id,
            job_id=lease.job_id,
            step=step,
            uri=uri,
            metrics=clean_json(metrics),
            created_at=utcnow(),
        )
    )
    add_event(
        session,
        lease.job_id,
        f"Checkpoint saved at step {step}",
        data={"kind": "checkpoint", "step": step, "checkpoint_id": checkpoint_id},
    )
    return status


def ack_cancel(session: Session, lease: Lease) -> bool:
    """cancelling → cancelled, when a cancel was asked while this worker held the job."""
    if _apply(session, _move(Trigger.ACK_CANCEL, *_owned(lease), **_ended(utcnow()))) is None:
        return False
    add_event(session, lease.job_id, "The job was cancelled", level="warning")
    job_finished(session, lease.job_id, JobStatus.CANCELLED)  # the webhook outbox, in this transaction
    return True


def ack_pause(session: Session, lease: Lease, *, step: int | None = None, reason: str | None = None) -> bool:
    """pausing → paused, releasing the lease; the attempt is given back (a pause is not a failure)."""
    stmt = _move(
        Trigger.ACK_PAUSE,
        *_owned(lease),
        attempt=Job.attempt - 1,
        seconds_remaining=None,
        **_released(utcnow()),
    )
    if _apply(session, stmt) is None:
        return False
    where = f" after the checkpoint at step {step}" if step is not None else ""
    why = f" ({reason})" if reason else ""
    add_event(
        session,
        lease.job_id,
        f"The job was paused{where}{why}; resume it to continue from its last checkpoint",
        data={"status": JobStatus.PAUSED, "step": step},
    )
    return True


def succeed(
    session: Session, lease: Lease, adapter: Adapter, result: dict[str, Any], trainable_params: int
) -> bool:
    """running → succeeded with its adapter (the Adapter row appears in the same commit).

    ``result`` is the run's metrics document; its ``trained_tokens`` (tokens the training read, all
    epochs counted, when the trainer counts them) and ``result_files`` (ids of files made for the
    job) fill the job's fields of those names: whoever trains reports them there, in one place.
    """
    tokens = result.get("trained_tokens")
    files = result.get("result_files")
    stmt = _move(
        Trigger.SUCCEED,
        *_owned(lease),
        adapter_id=adapter.id,
        result=clean_json({k: v for k, v in result.items() if k != "result_files"}),
        trainable_params=trainable_params,
        trained_tokens=int(tokens) if isinstance(tokens, int | float) and tokens >= 0 else None,
        result_files=[str(f) for f in files] if isinstance(files, list) else None,
        error=None,
        **_ended(utcnow()),
    )
    if _apply(session, stmt) is None:
        return False
    add_event(session, lease.job_id, "The job has successfully completed", data={"adapter_id": adapter.id})
    session.add(adapter)
    job_finished(session, lease.job_id, JobStatus.SUCCEEDED)
    return True


def fail(session: Session, lease: Lease, *, code: str, message: str, param: str | None) -> bool:
    """→ failed with ``error = {code, message, param}`` (``user_error`` is the caller's fault)."""
    error = {"code": code, "message": message, "param": param}
    if _apply(session, _move(Trigger.FAIL, *_owned(lease), error=error, **_ended(utcnow()))) is None:
        return False
    add_event(session, lease.job_id, message, level="error")
    job_finished(session, lease.job_id, JobStatus.FAILED)
    return True


def requeue(session: Session, lease: Lease, *, failure: str | None = None) -> bool:
    """running → queued for another attempt: after ``failure`` only while attempts remain; without
    one, unconditionally (the worker is shutting down, the attempt is not judged)."""
    guard = [Job.attempt < Job.max_attempts] if failure is not None else []
    if _apply(session, _move(Trigger.REQUEUE, *_owned(lease), *guard, **_released(utcnow()))) is None:
        return False
    if failure is None:
        add_event(session, lease.job_id, "The worker stopped; the job is queued again", level="warning")
    else:
        add_event(
            session,
            lease.job_id,
            f"Attempt {lease.attempt} failed ({failure}); the job is queued to run again",
            level="warning",
            data={"attempt": lease.attempt},
        )
    return True


# --- how an attempt ends: a cancel asked meanwhile always wins ----------------------------------------


def complete(
    session: Session, lease: Lease, adapter: Adapter, result: dict[str, Any], trainable_params: int
) -> JobStatus | None:
    """Succeed, or honour a cancel that came first; None when the lease is lost."""
    if succeed(session, lease, adapter, result, trainable_params):
        return JobStatus.SUCCEEDED
    return JobStatus.CANCELLED if ack_cancel(session, lease) else None


def end_attempt(
    session: Session, lease: Lease, *, code: str, message: str, param: str | None, retry: bool
) -> JobStatus | None:
    """End an attempt that raised: cancelled if a cancel was asked, queued again if ``retry`` and
    attempts remain, else failed. Returns the job's new status, or None when the lease no longer holds.
    """
    if ack_cancel(session, lease):
        return JobStatus.CANCELLED
    if retry and ack_pause(session, lease, reason=message):  # the retry waits for the resume
        return JobStatus.PAUSED
    if retry and requeue(session, lease, failure=message):
        return JobStatus.QUEUED
    if fail(session, lease, code=code, message=message, param=param):
        return JobStatus.FAILED
    # A cancel asked between the first check and now still wins.
    return JobStatus.CANCELLED if ack_cancel(session, lease) else None


# --- the user's cancel, pause and resume -------------------------------------------------------------

_USER_MESSAGES: dict[Trigger, dict[bool, str]] = {
    # trigger -> {whether the move ends the wait at once: event message}
    Trigger.CANCEL: {
        True: "Job cancelled",
        False: "Cancellation requested; the job stops after its current step",
    },
    Trigger.PAUSE: {
        True: "Job paused",
        False: "Pause requested; the job stops right after its next checkpoint",
    },
    Trigger.RESUME: {True: "Job resumed; queued to continue from its last checkpoint", False: "Job resumed"},
}


def _refusal(job_id: str, current: JobStatus, trigger: Trigger) -> Conflict:
    if current in TERMINAL:
        return Conflict(f"job {job_id} has already finished ({current}); there is nothing to {trigger}")
    if trigger == Trigger.RESUME:
        return Conflict(f"job {job_id} is {current}, not paused; there is nothing to resume")
    return Conflict(f"a {current} job cannot be {trigger}d; wait until it is queued or running")


def _user_move(session: Session, tenant_id: str, job_id: str, trigger: Trigger) -> tuple[Job, bool]:
    """Apply a user's ``trigger`` to the tenant's job; returns the job and whether it moved.

    Raises:
        NotFound: the tenant has no such job.
        Conflict: the table has no such move from the job's state, or the job kept changing state.
    """
    for _ in range(3):  # a worker may move the job between our read and our write
        job = session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.id == job_id)).first()
        if job is None:
            raise NotFound(f"no fine-tuning job {job_id!r}", param="fine_tuning_job_id")
        current = JobStatus(job.status)
        if (current, trigger) not in TRANSITIONS:
            raise _refusal(job_id, current, trigger)
        target = next_status(current, trigger)
        if target == current:  # already asked
            return job, False
        values: dict[str, Any] = {"finished_at": utcnow()} if target in TERMINAL else {}
        if target == JobStatus.QUEUED:  # the reconciler times the wait from now, and republishes if lost
            values["enqueued_at"] = utcnow()
        mine = (Job.tenant_id == tenant_id, Job.id == job_id)
        done = _apply(session, _move(trigger, *mine, among=(current,), **values))
        session.refresh(job)
        if done is not None:
            at_once = target in TERMINAL or target in (JobStatus.PAUSED, JobStatus.QUEUED)
            add_event(session, job_id, _USER_MESSAGES[trigger][at_once], data={"status": target})
            job_finished(session, job_id, target)  # the webhook outbox, when the move ends the job
            session.flush()
            return job, True
    raise Conflict(f"job {job_id} kept changing state; retry the {trigger}")


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """Cancel now if the job has not started (or is paused); ask a running one to stop (``cancelling``).

    Raises:
        NotFound: the tenant has no such job.
        Conflict: the job has already finished, or kept changing state under us.
    """
    return _user_move(session, tenant_id, job_id, Trigger.CANCEL)[0]


def pause(session: Session, tenant_id: str, job_id: str) -> Job:
    """Pause a queued job now; ask a running one to stop after its next checkpoint (``pausing``).

    Raises:
        NotFound: the tenant has no such job.
        Conflict: the job is validating its files, cancelling or finished.
    """
    return _user_move(session, tenant_id, job_id, Trigger.PAUSE)[0]


def resume(session: Session, tenant_id: str, job_id: str) -> tuple[Job, bool]:
    """Queue a paused job again (True: publish its run after the commit), or take back a pause that
    has not happened yet (``pausing`` → ``running``).

    Raises:
        NotFound: the tenant has no such job.
        Conflict: the job is not paused or pausing.
    """
    job, moved = _user_move(session, tenant_id, job_id, Trigger.RESUME)
    return job, moved and job.status == JobStatus.QUEUED


# --- the reconciler ---------------------------------------------------------------------------------


def _stale(now: datetime, lease_seconds: float) -> ColumnElement[bool]:
    """No live holder: no heartbeat within ``lease_seconds``."""
    return or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - timedelta(seconds=lease_seconds))


def _returning(session: Session, stmt: Update, *columns: Any) -> list[Any]:
    return list(session.execute(stmt.returning(Job.id, *columns), execution_options=_SYNC).all())


def rescue(session: Session, *, lease_seconds: float, now: datetime | None = None) -> list[tuple[str, str]]:
    """Finish what dead workers held: a cancel is acknowledged, a running attempt is re-queued (or
    failed after ``max_attempts``). Returns the tasks to publish."""
    now = now or utcnow()
    stale = _stale(now, lease_seconds)
    ended: dict[str, Any] = {"finished_at": now, "seconds_remaining": None}
    for (job_id,) in _returning(session, _move(Trigger.ACK_CANCEL, stale, **ended)):
        add_event(session, job_id, "The job was cancelled", level="warning")
        job_finished(session, job_id, JobStatus.CANCELLED)
    paused = _move(
        Trigger.ACK_PAUSE, stale, attempt=Job.attempt - 1, seconds_remaining=None, **_released(now)
    )
    for (job_id,) in _returning(session, paused):
        add_event(session, job_id, "The job was paused; resume it to continue from its last checkpoint")

    running = (JobStatus.RUNNING,)
    gone = "the worker running this job stopped responding, and no attempts remain"
    error = {"code": "error", "message": gone, "param": None}
    last = _move(Trigger.FAIL, stale, Job.attempt >= Job.max_attempts, among=running, error=error, **ended)
    for job_id, attempt in _returning(session, last, Job.attempt):
        add_event(
            session, job_id, f"The worker stopped responding on attempt {attempt}; job failed", level="error"
        )
        job_finished(session, job_id, JobStatus.FAILED)
    retry = _move(Trigger.REQUEUE, stale, Job.attempt < Job.max_attempts, among=running, **_released(now))
    due: list[tuple[str, str]] = []
    for job_id, attempt in _returning(session, retry, Job.attempt):
        add_event(
            session,
            job_id,
            f"The worker stopped responding on attempt {attempt}; the job is queued again",
            level="warning",
        )
        due.append((RUN_JOB, job_id))
    return due


def republish(
    session: Session,
    *,
    lease_seconds: float,
    republish_after_s: float = REPUBLISH_AFTER_S,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """The tasks of jobs waiting longer than ``republish_after_s`` (their message may be lost): a
    queued job's run, a validation that no live validator holds (its lease is cleared)."""
    now = now or utcnow()
    waiting = func.coalesce(Job.enqueued_at, Job.created_at) < now - timedelta(seconds=republish_after_s)
    lost = _move(Trigger.REPUBLISH, waiting, among=(JobStatus.QUEUED,), enqueued_at=now)
    unvalidated = _move(
        Trigger.REPUBLISH,
        waiting,
        _stale(now, lease_seconds),
        among=(JobStatus.VALIDATING_FILES,),
        **_released(now),
    )
    return [(RUN_JOB, job_id) for (job_id,) in _returning(session, lost)] + [
        (VALIDATE_JOB, job_id) for (job_id,) in _returning(session, unvalidated)
    ]


def reconcile(
    session: Session,
    *,
    lease_seconds: float,
    republish_after_s: float = REPUBLISH_AFTER_S,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """One repair pass (``rescue``, then ``republish``); returns the tasks to publish after the commit.

    Each repair is one conditional UPDATE, so reconcilers running side by side repair a job once.
    """
    now = now or utcnow()
    due = rescue(session, lease_seconds=lease_seconds, now=now)
    return due + republish(session, lease_seconds=lease_seconds, republish_after_s=republish_after_s, now=now)
