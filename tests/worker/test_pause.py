"""A worker honours a pause: the run stops right after its next checkpoint, the job is ``paused`` (its
attempt given back), and a resume continues from that checkpoint to the end. The success also fills
``trained_tokens`` and stores the results CSV as a file of the job's ``result_files``."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.artifacts import ArtifactStore
from domain.db import session_scope
from domain.files.models import File
from domain.jobs import lifecycle
from domain.jobs.lifecycle import Lease
from domain.jobs.models import JobCheckpoint, JobEvent
from domain.settings import Settings
from tests.worker.conftest import MakeJob, Sent, get_job, upload
from worker import tasks


def events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_pause_stops_after_the_next_checkpoint_and_resume_finishes(
    settings: Settings,
    make_job: MakeJob,
    tenant: str,
    dataset: Any,
    sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = make_job(upload(settings, tenant, dataset))
    assert tasks.validate_job(job_id) == "queued"
    claim = lifecycle.claim

    def claim_then_pause(session: Session, claimed: str) -> Lease | None:
        # The user asks for a pause as soon as the run starts, before any step.
        lease = claim(session, claimed)
        if lease is not None:
            lifecycle.pause(session, tenant, claimed)
        return lease

    monkeypatch.setattr(lifecycle, "claim", claim_then_pause)
    assert tasks.run_job(job_id) == "paused"
    monkeypatch.setattr(lifecycle, "claim", claim)

    paused = get_job(settings, job_id)
    assert paused.status == "paused"
    assert paused.attempt == 0  # a pause is not a failed attempt
    assert (paused.lease_token, paused.finished_at) == (None, None)
    # checkpoint_every=2: the run went on to step 2, stored that checkpoint, and stopped there.
    assert paused.steps_completed == 2
    with session_scope(settings.database_url) as session:
        steps = list(session.scalars(select(JobCheckpoint.step).where(JobCheckpoint.job_id == job_id)))
    assert steps == [2]
    assert "paused after the checkpoint at step 2" in events(settings, job_id)[-1].message
    assert tasks.run_job(job_id) == "skipped"  # a paused job's stray message runs nothing

    sent.clear()
    with session_scope(settings.database_url) as session:
        job, queued = lifecycle.resume(session, tenant, job_id)
    assert (job.status, queued) == ("queued", True)
    assert tasks.run_job(job_id) == "succeeded"

    done = get_job(settings, job_id)
    assert (done.attempt, done.steps_completed, done.total_steps) == (1, 12, 12)
    messages = [e.message for e in events(settings, job_id)]
    assert "Resuming from the checkpoint at step 2" in messages
    assert {e.type for e in events(settings, job_id)} <= {"message", "metrics"}
    assert sent == []

    # trained_tokens: the tokens of one epoch (non-padding, after truncation) times the epochs.
    assert done.trained_tokens is not None
    assert done.trained_tokens > 0
    assert done.trained_tokens % 2 == 0  # two epochs of the same data
    assert done.result_files is not None
    assert len(done.result_files) == 1
    with session_scope(settings.database_url) as session:
        file = session.get_one(File, done.result_files[0])
        session.expunge(file)
    assert (file.tenant_id, file.purpose) == (tenant, "fine-tune-results")
    store = ArtifactStore(settings.artifact_url)
    rows = list(csv.DictReader(io.StringIO(b"".join(store.iter_bytes(f"files/{tenant}/{file.id}")).decode())))
    assert list(rows[0]) == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    assert [int(r["step"]) for r in rows] == sorted(int(r["step"]) for r in rows)
    assert rows[-1]["step"] == "12"
    assert all(r["train_loss"] for r in rows)
    assert rows[-1]["valid_loss"]  # the last epoch ended at the last step
    assert rows[-1]["valid_mean_token_accuracy"]
