"""The tasks, by name. Thin: the logic lives in ``worker.runner`` and ``domain.jobs.lifecycle``.

Tasks never raise: every outcome is recorded on the job row, and the message is acknowledged after
the task returns (``task_acks_late``), so a worker that dies mid-job leaves the message to the broker
and the job to the reconciler.
"""

from __future__ import annotations

from domain.queue import RECONCILE, RUN_JOB, VALIDATE_JOB
from domain.settings import Settings, get_settings
from domain.webhooks import DELIVER_WEBHOOK
from worker import reconcile as reconciler
from worker import runner, webhooks
from worker.celery_app import app, publish_task


def _settings() -> Settings:
    return get_settings()


def _publish(task_name: str, job_id: str) -> None:
    publish_task(task_name, job_id)


@app.task(name=VALIDATE_JOB)  # type: ignore[untyped-decorator]  # celery is untyped
def validate_job(job_id: str) -> str:
    """validating_files → queued (and publish ``grft.run_job``) or failed."""
    try:
        return runner.validate_job(_settings(), job_id, _publish)
    finally:
        webhooks.dispatch(_settings())  # the webhooks of a job that ended here


@app.task(name=RUN_JOB)  # type: ignore[untyped-decorator]  # celery is untyped
def run_job(job_id: str) -> str:
    """queued → running → succeeded | failed | cancelled, or queued again for another attempt."""
    try:
        return runner.run_job(_settings(), job_id, _publish)
    finally:
        webhooks.dispatch(_settings())  # the webhooks of a job that ended here


@app.task(name=RECONCILE)  # type: ignore[untyped-decorator]  # celery is untyped
def reconcile() -> int:
    """Republish lost messages and rescue jobs of dead workers; returns how many tasks were sent."""
    return len(reconciler.reconcile(_settings(), _publish))


@app.task(name=DELIVER_WEBHOOK)  # type: ignore[untyped-decorator]  # celery is untyped
def deliver_webhook(delivery_id: str) -> str:
    """One attempt of a webhook delivery: delivered, retry (published again with a backoff), failed."""
    return webhooks.deliver(_settings(), delivery_id)
