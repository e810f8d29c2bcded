"""Model ids in OpenAI's forms, and what they name.

* A fine-tuned model: ``ft:<base>:<org>:<suffix>:<id>``, where ``<org>`` is the tenant's id (the job's
  ``organization_id``), ``<suffix>`` the job's (empty when none was given) and ``<id>`` the random part of
  the job's id, so the id is unique and a pure function of the job: no column holds it.
* One of its checkpoints: ``ft:<base>:<org>:<suffix>:<id>:ckpt-step-<N>``, also written
  ``<job id>:ckpt-step-<N>`` (the form our checkpoints showed first).
* The adapter id (``adapter-…``) stays an alias of the fine-tuned model everywhere a model id is taken.

``Job.model`` always holds the base model: a job that continues from a fine-tuned model or checkpoint
records that id in ``Job.init_from`` (and shows it as its ``model``), and its own id names the base.

``resolve`` reads an id back within one tenant: another tenant's model is as good as missing, and an id
whose base, org or suffix do not match its job's is refused too, so only the exact id works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.adapters.models import Adapter
from domain.jobs.models import Job, JobCheckpoint
from domain.jobs.states import JobStatus

PREFIX = "ft:"
JOB_PREFIX = "ftjob-"
ADAPTER_PREFIX = "adapter-"
# OpenAI's rule for ``suffix``: up to 64 of these characters.
SUFFIX_PATTERN = r"^[A-Za-z0-9_-]{0,64}$"
_CKPT = re.compile(r"^ckpt-step-([0-9]{1,9})$")
#: Longest id a route accepts: ``ft:`` + base (64) + org + suffix (64) + id + checkpoint, with room.
MAX_MODEL_ID = 320


def fine_tuned_model_id(job: Job) -> str:
    """The fine-tuned model id of ``job`` (whatever its state: callers show it once it succeeded)."""
    return f"{PREFIX}{job.model}:{job.tenant_id}:{job.suffix or ''}:{job.id.removeprefix(JOB_PREFIX)}"


def checkpoint_model_id(job: Job, step: int) -> str:
    """OpenAI's ``fine_tuned_model_checkpoint`` of ``job``'s checkpoint at ``step``."""
    return f"{fine_tuned_model_id(job)}:ckpt-step-{step}"


def looks_fine_tuned(model_id: str) -> bool:
    """Whether ``model_id`` has the form of a fine-tuned model, a checkpoint or an adapter (not a base)."""
    return model_id.startswith((PREFIX, JOB_PREFIX, ADAPTER_PREFIX))


@dataclass(frozen=True)
class Resolved:
    """What a fine-tuned model id names: the job and its adapter, or the job and one checkpoint.

    ``adapter`` is None for a checkpoint; ``checkpoint`` is None for a fine-tuned model.
    """

    id: str
    job: Job | None
    adapter: Adapter | None
    checkpoint: JobCheckpoint | None

    @property
    def base_model(self) -> str:
        if self.adapter is not None:
            return self.adapter.base_model
        assert self.job is not None
        return self.job.model


def _job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    stmt = select(Job).where(Job.tenant_id == tenant_id, Job.id == job_id)
    return session.scalars(stmt).first()


def _adapter(session: Session, tenant_id: str, adapter_id: str) -> Adapter | None:
    stmt = select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.id == adapter_id)
    return session.scalars(stmt).first()


def _checkpoint(session: Session, job_id: str, step: int) -> JobCheckpoint | None:
    stmt = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id, JobCheckpoint.step == step)
    return session.scalars(stmt.order_by(JobCheckpoint.created_at.desc())).first()


def _split_checkpoint(model_id: str) -> tuple[str, int | None]:
    head, sep, tail = model_id.rpartition(":")
    match = _CKPT.match(tail) if sep else None
    return (head, int(match.group(1))) if match else (model_id, None)


def resolve(session: Session, tenant_id: str, model_id: str) -> Resolved | None:
    """The tenant's fine-tuned model, checkpoint or adapter that ``model_id`` names; None otherwise
    (a base model name, a typo, another tenant's model, a job that has not succeeded)."""
    if model_id.startswith(ADAPTER_PREFIX):
        adapter = _adapter(session, tenant_id, model_id)
        if adapter is None:
            return None
        job = _job(session, tenant_id, adapter.job_id) if adapter.job_id else None
        return Resolved(model_id, job, adapter, None)
    head, step = _split_checkpoint(model_id)
    if head.startswith(JOB_PREFIX):
        job = _job(session, tenant_id, head)
    elif head.startswith(PREFIX):
        job = _job(session, tenant_id, JOB_PREFIX + head.rpartition(":")[2])
        if job is not None and fine_tuned_model_id(job) != head:
            job = None
    else:
        return None
    if job is None:
        return None
    if step is not None:
        checkpoint = _checkpoint(session, job.id, step)
        return None if checkpoint is None else Resolved(model_id, job, None, checkpoint)
    if head.startswith(JOB_PREFIX) or job.status != JobStatus.SUCCEEDED or job.adapter_id is None:
        return None  # a job id alone names no model; a model exists once its job succeeded
    adapter = _adapter(session, tenant_id, job.adapter_id)
    return None if adapter is None else Resolved(model_id, job, adapter, None)


def fine_tuned_models(session: Session, tenant_id: str, limit: int = 1000) -> list[tuple[Job, Adapter]]:
    """The tenant's fine-tuned models (succeeded jobs whose adapter still exists), newest first."""
    stmt = (
        select(Job, Adapter)
        .join(Adapter, Adapter.id == Job.adapter_id)
        .where(Job.tenant_id == tenant_id, Adapter.tenant_id == tenant_id, Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    return [(row[0], row[1]) for row in session.execute(stmt).all()]


def origin(resolved: Resolved) -> dict[str, Any]:
    """What a new job records of the model it continues from (``Job.init_from``)."""
    return {
        "model": resolved.id,
        "base_model": resolved.base_model,
        "job_id": resolved.job.id if resolved.job is not None else None,
        "adapter_id": resolved.adapter.id if resolved.adapter is not None else None,
        "step": resolved.checkpoint.step if resolved.checkpoint is not None else None,
        "checkpoint_uri": resolved.checkpoint.uri if resolved.checkpoint is not None else None,
    }
