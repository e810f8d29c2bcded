"""Job-state transitions, each one compare-and-set statement under the job's lease.

A worker owns a job through a ``Lease``: the claim sets a fresh ``lease_token`` and every later write
names it (``WHERE lease_token = :token``), so a worker that lost its lease (the reconciler re-queued
the job, another worker claimed it) changes nothing. Functions here take a session and never commit:
the caller's ``session_scope`` commits once, and publishes to the broker only after that.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.ids import new_id

# Through domain.models, every mapped class is registered before the first flush (foreign keys resolve).
from domain.models import Adapter, File, Job, JobCheckpoint, JobEvent

ACTIVE = ("running", "cancelling")

Publish = Callable[[str, str], object]
"""``publish(task_name, job_id)``: sends a task by name (after the commit that made it due)."""


@dataclass(frozen=True)
class Lease:
    """Proof of ownership of a job: every fenced write names ``token``."""

    job_id: str
    token: str
    attempt: int


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs to know about a job, read once after the claim."""

    id: str
    tenant_id: str
    model: str
    training_file: str
    validation_file: str | None
    method: dict[str, Any]
    seed: int
    attempt: int
    max_attempts: int


class LeaseLost(Exception):
    """The job is no longer this worker's (re-queued, claimed elsewhere, or ended): stop writing."""


def clean_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (Postgres JSON refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    type: str = "message",
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEvent(
            id=new_id("ftevent"),
            job_id=job_id,
            created_at=utcnow(),
            level=level,
            type=type,
            message=message[:2048],
            data=clean_json(data),
        )
    )


def _owned(lease: Lease, statuses: tuple[str, ...]) -> list[ColumnElement[bool]]:
    return [Job.id == lease.job_id, Job.lease_token == lease.token, Job.status.in_(statuses)]


def _returning_status(session: Session, stmt: Any) -> str | None:
    row = session.execute(
        stmt.returning(Job.status), execution_options={"synchronize_session": False}
    ).first()
    return None if row is None else str(row[0])


# --- claims -----------------------------------------------------------------------------------------


def claim_validation(session: Session, job_id: str, lease_seconds: float) -> Lease | None:
    """Take a ``validating_files`` job that no live validator holds; None when there is none."""
    now, token = utcnow(), uuid.uuid4().hex
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == "validating_files",
            or_(
                Job.lease_token.is_(None),
                Job.heartbeat_at.is_(None),
                Job.heartbeat_at < now - timedelta(seconds=lease_seconds),
            ),
        )
        .values(lease_token=token, heartbeat_at=now)
        .returning(Job.attempt)
    )
    row = session.execute(stmt, execution_options={"synchronize_session": False}).first()
    return None if row is None else Lease(job_id, token, int(row[0]))


def claim_run(session: Session, job_id: str) -> Lease | None:
    """queued → running, bumping ``attempt`` under a new token; None when another worker has it."""
    now, token = utcnow(), uuid.uuid4().hex
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="running",
            attempt=Job.attempt + 1,
            lease_token=token,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
        )
        .returning(Job.attempt)
    )
    row = session.execute(stmt, execution_options={"synchronize_session": False}).first()
    return None if row is None else Lease(job_id, token, int(row[0]))


def job_spec(session: Session, job_id: str) -> JobSpec:
    job = session.get_one(Job, job_id)
    return JobSpec(
        id=job.id,
        tenant_id=job.tenant_id,
        model=job.model,
        training_file=job.training_file,
        validation_file=job.validation_file,
        method=dict(job.method or {}),
        seed=job.seed,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
    )


def tenant_file(session: Session, tenant_id: str, file_id: str) -> File | None:
    """An uploaded file of this tenant (another tenant's file is as good as missing)."""
    return session.scalars(select(File).where(File.id == file_id, File.tenant_id == tenant_id)).first()


# --- fenced writes ----------------------------------------------------------------------------------


def beat(session: Session, lease: Lease, statuses: tuple[str, ...] = ACTIVE, **values: Any) -> str:
    """Heartbeat (plus any progress ``values``) under the lease; returns the job's status.

    Raises:
        LeaseLost: the token no longer owns the job in one of ``statuses``.
    """
    stmt = update(Job).where(*_owned(lease, statuses)).values(heartbeat_at=utcnow(), **values)
    status = _returning_status(session, stmt)
    if status is None:
        raise LeaseLost(lease.job_id)
    return status


def mark_queued(session: Session, lease: Lease, message: str, data: dict[str, Any]) -> bool:
    """validating_files → queued (the lease is released: a run claims afresh)."""
    stmt = (
        update(Job)
        .where(*_owned(lease, ("validating_files",)))
        .values(status="queued", enqueued_at=utcnow(), lease_token=None, heartbeat_at=None)
    )
    if _returning_status(session, stmt) is None:
        return False
    add_event(session, lease.job_id, message, data=data)
    return True


def finish(
    session: Session,
    lease: Lease,
    status: str,
    message: str,
    *,
    from_statuses: tuple[str, ...] = ACTIVE,
    level: str = "info",
    data: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """Move an owned job to a terminal ``status``; False when the lease no longer holds."""
    now = utcnow()
    stmt = (
        update(Job)
        .where(*_owned(lease, from_statuses))
        .values(status=status, finished_at=now, heartbeat_at=now, seconds_remaining=None, **values)
    )
    if _returning_status(session, stmt) is None:
        return False
    add_event(session, lease.job_id, message, level=level, data=data)
    return True


def settle_cancel(session: Session, lease: Lease) -> bool:
    """cancelling → cancelled, when a cancel was asked while this worker held the job."""
    return finish(
        session, lease, "cancelled", "The job was cancelled", from_statuses=("cancelling",), level="warning"
    )


def settle_error(
    session: Session,
    lease: Lease,
    *,
    code: str,
    message: str,
    param: str | None,
    retry: bool,
    from_statuses: tuple[str, ...] = ACTIVE,
) -> str | None:
    """End an attempt that raised: cancelled if asked, queued again if ``retry`` and attempts remain,
    else failed. Returns the job's new status, or None when the lease no longer holds."""
    if settle_cancel(session, lease):
        return "cancelled"
    if retry:
        stmt = (
            update(Job)
            .where(*_owned(lease, ("running",)), Job.attempt < Job.max_attempts)
            .values(status="queued", enqueued_at=utcnow(), lease_token=None, heartbeat_at=None)
        )
        if _returning_status(session, stmt) is not None:
            add_event(
                session,
                lease.job_id,
                f"Attempt {lease.attempt} failed ({message}); the job is queued to run again",
                level="warning",
                data={"attempt": lease.attempt},
            )
            return "queued"
    error = {"code": code, "message": message, "param": param}
    if finish(session, lease, "failed", message, from_statuses=from_statuses, level="error", error=error):
        return "failed"
    return None


def release(session: Session, lease: Lease) -> bool:
    """running → queued without judging the attempt (the worker is shutting down)."""
    stmt = (
        update(Job)
        .where(*_owned(lease, ("running",)))
        .values(status="queued", enqueued_at=utcnow(), lease_token=None, heartbeat_at=None)
    )
    if _returning_status(session, stmt) is None:
        return False
    add_event(session, lease.job_id, "The worker stopped; the job is queued again", level="warning")
    return True


def record_checkpoint(
    session: Session, lease: Lease, step: int, uri: str, metrics: dict[str, Any], keep_steps: list[int]
) -> str:
    """Replace the job's checkpoint rows by those of ``keep_steps`` plus ``step``; returns the status.

    Raises:
        LeaseLost: the lease no longer holds.
    """
    status = beat(session, lease)
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
        type="checkpoint",
        data={"step": step, "checkpoint_id": checkpoint_id},
    )
    return status


def complete(
    session: Session, lease: Lease, adapter: Adapter, result: dict[str, Any], trainable_params: int
) -> str | None:
    """running → succeeded with its adapter (the Adapter row appears in the same commit).

    Returns ``"succeeded"``, ``"cancelled"`` when a cancel arrived first, or None when the lease is lost.
    """
    done = finish(
        session,
        lease,
        "succeeded",
        "The job has successfully completed",
        from_statuses=("running",),
        data={"adapter_id": adapter.id},
        adapter_id=adapter.id,
        result=clean_json(result),
        trainable_params=trainable_params,
        error=None,
    )
    if done:
        session.add(adapter)
        return "succeeded"
    return "cancelled" if settle_cancel(session, lease) else None
