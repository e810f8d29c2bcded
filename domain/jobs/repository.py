"""Queries on jobs, their events and checkpoints; every one starts from the tenant's own jobs, except
the garbage collector's (``domain.gc``), which sweep every tenant's finished jobs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from domain.adapters.models import Adapter
from domain.auth.models import Tenant
from domain.jobs.models import Job, JobCheckpoint, JobEvent
from domain.jobs.states import TERMINAL
from domain.pagination import keyset_page


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
    return keyset_page(session, stmt, (Job.created_at, Job.id), after, limit)


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
    after = (before_seq,) if before_seq is not None else None
    return keyset_page(session, _tenant_events(tenant_id, job_id), (JobEvent.seq,), after, limit)


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
    order = (JobCheckpoint.step, JobCheckpoint.id)
    return keyset_page(session, _tenant_checkpoints(tenant_id, job_id), order, after, limit)


# --- deletion -------------------------------------------------------------------------------------


def adapters_of(session: Session, tenant_id: str, job: Job) -> list[Adapter]:
    """The adapters ``job`` produced (one for a succeeded job, none otherwise)."""
    made_by = [Adapter.job_id == job.id]
    if job.adapter_id is not None:
        made_by.append(Adapter.id == job.adapter_id)
    return list(session.scalars(select(Adapter).where(Adapter.tenant_id == tenant_id, or_(*made_by))))


def delete_finished(session: Session, tenant_id: str, job_id: str, adapter_ids: Sequence[str]) -> bool:
    """Delete a finished job of the tenant with its events, checkpoints and the adapters ``adapter_ids``.

    Returns False when there was no such finished job (a concurrent delete got there first). Plain SQL
    deletes, so a race makes this one delete nothing rather than fail on rows that vanished.
    """
    finished = _tenant_jobs(tenant_id).where(Job.id == job_id, Job.status.in_(TERMINAL))
    owned = finished.with_only_columns(Job.id)
    quiet = {"synchronize_session": False}
    # The job and adapter objects the session holds are marked deleted too ("evaluate"); the events and
    # checkpoints, many and rarely loaded, are not looked for.
    coherent = {"synchronize_session": "evaluate"}
    if adapter_ids:
        adapters = delete(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.id.in_(list(adapter_ids)))
        session.execute(adapters, execution_options=coherent)
    session.execute(delete(JobEvent).where(JobEvent.job_id.in_(owned)), execution_options=quiet)
    session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id.in_(owned)), execution_options=quiet)
    jobs = delete(Job).where(Job.tenant_id == tenant_id, Job.id == job_id, Job.status.in_(TERMINAL))
    return _rowcount(session.execute(jobs, execution_options=coherent)) > 0


# --- garbage collection (every tenant) ------------------------------------------------------------

_IN_BATCH = 500


def _rowcount(result: Any) -> int:
    # A DML statement's result is a CursorResult, which Session.execute's annotation does not say.
    return int(cast("CursorResult[Any]", result).rowcount or 0)


def _finished_before(cutoff: datetime) -> Any:
    # Terminal moves always set finished_at; created_at stands in for rows written before they did.
    return Job.status.in_(TERMINAL) & (func.coalesce(Job.finished_at, Job.created_at) < cutoff)


def delete_checkpoints_finished_before(session: Session, cutoff: datetime) -> int:
    """Delete the checkpoint rows of every job that finished before ``cutoff``; returns how many."""
    expired = select(Job.id).where(_finished_before(cutoff))
    stmt = delete(JobCheckpoint).where(JobCheckpoint.job_id.in_(expired))
    return _rowcount(session.execute(stmt, execution_options={"synchronize_session": False}))


def collectable(session: Session, job_ids: Sequence[str], cutoff: datetime) -> list[str]:
    """Those of ``job_ids`` whose stored files may go: the job finished before ``cutoff``, or its row
    is gone (the job was deleted)."""
    keep: set[str] = set()
    for start in range(0, len(job_ids), _IN_BATCH):
        batch = list(job_ids[start : start + _IN_BATCH])
        live = select(Job.id).where(Job.id.in_(batch), ~_finished_before(cutoff))
        keep.update(session.scalars(live))
    return [job_id for job_id in job_ids if job_id not in keep]
