"""Queries on jobs, their events and checkpoints; every one starts from the tenant's own jobs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from domain.auth.models import Tenant
from domain.jobs.models import TERMINAL, Job, JobCheckpoint, JobEvent

ACTIVE = ("validating_files", "queued", "running", "cancelling")


def _tenant_jobs(tenant_id: str) -> Select[Job]:
    return select(Job).where(Job.tenant_id == tenant_id)


def _tenant_events(tenant_id: str, job_id: str) -> Select[JobEvent]:
    return (
        select(JobEvent)
        .join(Job, Job.id == JobEvent.job_id)
        .where(Job.tenant_id == tenant_id, JobEvent.job_id == job_id)
    )


def _tenant_checkpoints(tenant_id: str, job_id: str) -> Select[JobCheckpoint]:
    return (
        select(JobCheckpoint)
        .join(Job, Job.id == JobCheckpoint.job_id)
        .where(Job.tenant_id == tenant_id, JobCheckpoint.job_id == job_id)
    )


# --- jobs -----------------------------------------------------------------------------------------


def get(session: Session, tenant_id: str, job_id: str) -> Job | None:
    return session.scalars(_tenant_jobs(tenant_id).where(Job.id == job_id)).first()


def by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalars(_tenant_jobs(tenant_id).where(Job.idempotency_key == key)).first()


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise job creation per tenant until commit, so the quota count cannot be raced
    (``FOR UPDATE`` is a no-op on SQLite, whose writers are serialised anyway)."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def count(session: Session, tenant_id: str, *, statuses: Iterable[str] | None = None) -> int:
    stmt = _tenant_jobs(tenant_id)
    if statuses is not None:
        stmt = stmt.where(Job.status.in_(tuple(statuses)))
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


def insert(session: Session, job: Job, events: Iterable[JobEvent]) -> None:
    """Add the job and its first events (an ``IntegrityError`` means its idempotency key is taken)."""
    session.add(job)
    session.flush()
    session.add_all(list(events))
    session.flush()


def page(
    session: Session,
    tenant_id: str,
    *,
    after: Job | None,
    limit: int,
    status: str | None,
    metadata: Mapping[str, str],
) -> tuple[list[Job], bool]:
    """Newest first; ``after`` is the last job of the previous page. Returns ``(rows, has_more)``."""
    stmt = _tenant_jobs(tenant_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    for key, value in metadata.items():
        stmt = stmt.where(Job.metadata_[key].as_string() == value)
    if after is not None:
        # (created_at, id) is a total order, so jobs created in the same microsecond are not skipped.
        stmt = stmt.where(
            or_(
                Job.created_at < after.created_at,
                and_(Job.created_at == after.created_at, Job.id < after.id),
            )
        )
    rows = list(session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def transition(
    session: Session, tenant_id: str, job_id: str, from_statuses: Iterable[str], **values: Any
) -> bool:
    """Compare-and-set: apply ``values`` only if the job is still in one of ``from_statuses``."""
    result = session.execute(
        update(Job)
        .where(Job.tenant_id == tenant_id, Job.id == job_id, Job.status.in_(tuple(from_statuses)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def active_job_reading(session: Session, tenant_id: str, file_id: str) -> Job | None:
    stmt = _tenant_jobs(tenant_id).where(
        Job.status.not_in(TERMINAL), or_(Job.training_file == file_id, Job.validation_file == file_id)
    )
    return session.scalars(stmt.limit(1)).first()


# --- events ---------------------------------------------------------------------------------------


def add_event(session: Session, event: JobEvent) -> None:
    session.add(event)
    session.flush()


def event(session: Session, tenant_id: str, job_id: str, event_id: str) -> JobEvent | None:
    return session.scalars(_tenant_events(tenant_id, job_id).where(JobEvent.id == event_id)).first()


def events_page(
    session: Session, tenant_id: str, job_id: str, *, before_seq: int | None, limit: int
) -> tuple[list[JobEvent], bool]:
    """Newest first, older than ``before_seq`` when given. Returns ``(rows, has_more)``."""
    stmt = _tenant_events(tenant_id, job_id)
    if before_seq is not None:
        stmt = stmt.where(JobEvent.seq < before_seq)
    rows = list(session.scalars(stmt.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def events_since(
    session: Session, tenant_id: str, job_id: str, *, after_seq: int, limit: int
) -> list[JobEvent]:
    """Oldest first, newer than ``after_seq``."""
    stmt = _tenant_events(tenant_id, job_id).where(JobEvent.seq > after_seq)
    return list(session.scalars(stmt.order_by(JobEvent.seq).limit(limit)))


def metric_data(session: Session, tenant_id: str, job_id: str) -> list[dict[str, Any]]:
    """The ``data`` of every ``metrics`` event, oldest first."""
    stmt = (
        _tenant_events(tenant_id, job_id)
        .where(JobEvent.type == "metrics")
        .order_by(JobEvent.seq)
        .with_only_columns(JobEvent.data)
    )
    return [d for d in session.scalars(stmt) if isinstance(d, dict)]


# --- checkpoints ----------------------------------------------------------------------------------


def checkpoint(session: Session, tenant_id: str, job_id: str, checkpoint_id: str) -> JobCheckpoint | None:
    stmt = _tenant_checkpoints(tenant_id, job_id).where(JobCheckpoint.id == checkpoint_id)
    return session.scalars(stmt).first()


def checkpoints_page(
    session: Session, tenant_id: str, job_id: str, *, after: JobCheckpoint | None, limit: int
) -> tuple[list[JobCheckpoint], bool]:
    """Latest step first. Returns ``(rows, has_more)``."""
    stmt = _tenant_checkpoints(tenant_id, job_id)
    if after is not None:
        stmt = stmt.where(
            or_(
                JobCheckpoint.step < after.step,
                and_(JobCheckpoint.step == after.step, JobCheckpoint.id < after.id),
            )
        )
    order = (JobCheckpoint.step.desc(), JobCheckpoint.id.desc())
    rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
