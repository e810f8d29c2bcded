"""A real job's end, through the worker's tasks: the success writes its delivery in the same commit,
the task publishes it to the broker, and ``grft.deliver_webhook`` brings the signed event to the
receiver."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from domain.settings import Settings
from domain.webhooks import DELIVER_WEBHOOK
from tests.api.jobs.helpers import published
from tests.webhooks.conftest import Receiver
from tests.webhooks.helpers import endpoint, signature_valid
from tests.worker.conftest import REDIS_URL, MakeJob, Sent, upload
from worker import tasks


def test_success_reaches_the_receiver(
    settings: Settings, make_job: MakeJob, tenant: str, dataset: Path, sent: Sent, receiver: Receiver
) -> None:
    hook = endpoint(settings, tenant, receiver.url, events=("fine_tuning.job.succeeded",))
    broker = redis.Redis.from_url(REDIS_URL)
    try:
        job_id = make_job(upload(settings, tenant, dataset))
        assert tasks.validate_job(job_id) == "queued"
        assert published(broker, settings.queue) == []  # validation is no end: nothing to send
        assert tasks.run_job(job_id) == "succeeded"
        [(name, [delivery_id])] = published(broker, settings.queue)
        assert name == DELIVER_WEBHOOK
    finally:
        broker.delete(settings.queue)
        broker.close()
    assert tasks.deliver_webhook(delivery_id) == "delivered"
    [request] = receiver.requests
    assert signature_valid(hook.secret, request.headers, request.body)
    event = json.loads(request.body)
    assert (event["type"], event["data"]) == ("fine_tuning.job.succeeded", {"id": job_id})
