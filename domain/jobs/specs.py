"""Reads a worker makes about a job it holds: its ``JobSpec`` and the tenant's uploaded files.

Reads only: every change of a job's state goes through ``domain.jobs.lifecycle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

# Through domain.models, every mapped class is registered before the first query (foreign keys resolve).
from domain.models import File, Job


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
    # The fine-tuned model or checkpoint the job continues from (``domain.jobs.continuation``).
    init_from: dict[str, Any] | None = None
    # Experiment trackers to report to (``domain.jobs.integrations``), as stored.
    integrations: tuple[dict[str, Any], ...] = ()


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
        init_from=dict(job.init_from) if job.init_from else None,
        integrations=tuple(job.integrations or ()),
    )


def tenant_file(session: Session, tenant_id: str, file_id: str) -> File | None:
    """An uploaded file of this tenant (another tenant's file is as good as missing)."""
    return session.scalars(select(File).where(File.id == file_id, File.tenant_id == tenant_id)).first()
