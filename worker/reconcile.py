"""The reconciler: the database is the truth, so lost messages and dead workers are repaired from it.

It republishes ``queued`` and ``validating_files`` jobs whose message may have been lost, re-queues
``running`` jobs whose heartbeat went stale (or fails them after ``max_attempts``), and finishes
cancels that no worker holds. It runs as ``grft.reconcile`` under celery beat (distributed mode) or on
a thread of the embedded worker; several reconcilers side by side are safe.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import func, or_, update
from sqlalchemy.orm import Session

from domain.db import session_scope, utcnow
from domain.jobs.lifecycle import Publish, add_event
from domain.models import Job
from domain.queue import RUN_JOB, VALIDATE_JOB, prune_processed
from domain.settings import Settings

log = logging.getLogger(__name__)

# A queued job whose message may have been lost is republished at most once per this many seconds.
REPUBLISH_AFTER_S = 60.0


def repair(
    session: Session,
    *,
    lease_seconds: float,
    republish_after_s: float = REPUBLISH_AFTER_S,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """Repair what lost messages and dead workers leave behind; returns the tasks to publish.

    Each repair is one conditional UPDATE, so reconcilers running side by side repair a job once.
    """
    now = now or utcnow()
    stale = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - timedelta(seconds=lease_seconds))
    waiting = func.coalesce(Job.enqueued_at, Job.created_at) < now - timedelta(seconds=republish_after_s)
    due: list[tuple[str, str]] = []
    opts = {"synchronize_session": False}

    orphans = update(Job).where(Job.status == "cancelling", stale)
    for (job_id,) in session.execute(
        orphans.values(status="cancelled", finished_at=now, seconds_remaining=None).returning(Job.id),
        execution_options=opts,
    ).all():
        add_event(session, job_id, "The job was cancelled", level="warning")

    dead = update(Job).where(Job.status == "running", stale)
    exhausted = dead.where(Job.attempt >= Job.max_attempts)
    for job_id, attempt in session.execute(
        exhausted.values(
            status="failed",
            finished_at=now,
            seconds_remaining=None,
            error={
                "code": "error",
                "message": "the worker running this job stopped responding, and no attempts remain",
                "param": None,
            },
        ).returning(Job.id, Job.attempt),
        execution_options=opts,
    ).all():
        add_event(
            session, job_id, f"The worker stopped responding on attempt {attempt}; job failed", level="error"
        )
    retry = dead.where(Job.attempt < Job.max_attempts)
    for job_id, attempt in session.execute(
        retry.values(status="queued", enqueued_at=now, lease_token=None, heartbeat_at=None).returning(
            Job.id, Job.attempt
        ),
        execution_options=opts,
    ).all():
        add_event(
            session,
            job_id,
            f"The worker stopped responding on attempt {attempt}; the job is queued again",
            level="warning",
        )
        due.append((RUN_JOB, job_id))

    lost = update(Job).where(Job.status == "queued", waiting).values(enqueued_at=now)
    due += [
        (RUN_JOB, job_id) for (job_id,) in session.execute(lost.returning(Job.id), execution_options=opts)
    ]
    unvalidated = (
        update(Job)
        .where(Job.status == "validating_files", waiting, stale)
        .values(enqueued_at=now, lease_token=None, heartbeat_at=None)
    )
    due += [
        (VALIDATE_JOB, job_id)
        for (job_id,) in session.execute(unvalidated.returning(Job.id), execution_options=opts)
    ]
    return due


def reconcile(settings: Settings, publish: Publish) -> list[tuple[str, str]]:
    """One reconciler pass: repair in one commit, then publish what became due."""
    with session_scope(settings.database_url) as session:
        due = repair(session, lease_seconds=settings.lease_seconds)
    for task_name, job_id in due:
        publish(task_name, job_id)
    if settings.embedded:
        prune_processed(settings)
    return due


def reconcile_forever(settings: Settings, publish: Publish, stop: threading.Event) -> None:
    """Run ``reconcile`` every ``reconcile_seconds`` until ``stop`` is set (embedded mode)."""
    while True:
        try:
            reconcile(settings, publish)
        except Exception:  # noqa: BLE001 - the database may be restarting: try again next round
            log.warning("reconcile pass failed", exc_info=True)
        if stop.wait(settings.reconcile_seconds):
            return
