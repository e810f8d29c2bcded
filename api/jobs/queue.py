"""Telling workers that a job is ready: a Celery task sent by name, never by importing ``worker``.

The message only says "job X"; the database row says everything else, so a lost message costs a
delay (the reconciler republishes), never a job. The Celery settings (broker, transport folders,
routes, JSON only) are the ones the worker uses too, from ``domain.queue``.
"""

from __future__ import annotations

from domain.queue import RUN_JOB, VALIDATE_JOB, publish
from domain.settings import Settings


def publish_validate(settings: Settings, job_id: str) -> bool:
    """Send ``grft.validate_job(job_id)`` to ``settings.queue``; False (and a log line) if it failed.

    Call it only after the job's row is committed.
    """
    return publish(settings, VALIDATE_JOB, job_id)


def publish_run(settings: Settings, job_id: str) -> bool:
    """Send ``grft.run_job(job_id)`` (a resumed job); False (and a log line) if it failed.

    Call it only after the job's row is committed; a lost message is republished by the reconciler.
    """
    return publish(settings, RUN_JOB, job_id)
