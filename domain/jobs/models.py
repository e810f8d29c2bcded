"""Fine-tuning jobs, their events and checkpoints. The database is the only source of truth.

States and their moves: ``domain.jobs.states``; the only code that moves them: ``domain.jobs.lifecycle``.
A worker owns a job through ``lease_token`` (fencing: every write it makes names the token, so a stale
duplicate changes nothing) and proves it is alive through ``heartbeat_at``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base, utcnow
from domain.jobs.states import INITIAL


class Job(Base):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("uq_jobs_tenant_idempotency", "tenant_id", "idempotency_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(128))
    training_file: Mapped[str] = mapped_column(String(2048))
    validation_file: Mapped[str | None] = mapped_column(String(2048), default=None)
    method: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    # Written only by domain.jobs.lifecycle; values are domain.jobs.states.JobStatus.
    status: Mapped[str] = mapped_column(String(32), default=INITIAL, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_token: Mapped[str | None] = mapped_column(String(64), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    steps_completed: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, default=None)
    seconds_remaining: Mapped[float | None] = mapped_column(default=None)
    # The phase in course and how far it is: {"phase", "done", "total", "eta_seconds"} (worker.progress).
    progress: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger, default=None)
    adapter_id: Mapped[str | None] = mapped_column(String(64), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # Tokens the training read, all epochs counted (text jobs); set with the success.
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Ids of the files made at success (the results CSV), OpenAI's ``result_files``.
    result_files: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # The fine-tuned model or checkpoint this job continues from (``domain.jobs.model_ids.origin``).
    init_from: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Experiment trackers the worker reports to (``[{"type": "wandb", "wandb": {...}}]``, or mlflow).
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)


class JobEvent(Base):
    __tablename__ = "fine_tuning_job_events"
    __table_args__ = (Index("ix_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(32), default="message")
    message: Mapped[str] = mapped_column(String(2048))
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class JobCheckpoint(Base):
    __tablename__ = "fine_tuning_job_checkpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
