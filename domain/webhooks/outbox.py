"""The outbox: a job's end becomes a webhook event and one pending delivery per endpoint that wants it,
written in the transaction that ends the job (``domain.jobs.lifecycle`` calls ``job_finished``), so
an ended job is never without its deliveries and a rolled-back end never sends one.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.ids import new_id
from domain.jobs.models import Job
from domain.jobs.states import JobStatus
from domain.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

SUCCEEDED = "fine_tuning.job.succeeded"
FAILED = "fine_tuning.job.failed"
CANCELLED = "fine_tuning.job.cancelled"
#: The events an endpoint may subscribe to (OpenAI's names for a fine-tuning job's end).
EVENT_TYPES = (SUCCEEDED, FAILED, CANCELLED)
#: What ``POST /v1/webhooks/{id}/test`` sends: not a job's event, so no receiver mistakes it for one.
TEST_EVENT = "webhook.test"
_BY_STATUS: dict[str, str] = {
    JobStatus.SUCCEEDED: SUCCEEDED,
    JobStatus.FAILED: FAILED,
    JobStatus.CANCELLED: CANCELLED,
}


def _event(session: Session, tenant_id: str, type: str, data: dict[str, str]) -> WebhookEvent:
    now = utcnow()
    event_id = new_id("evt")
    payload = {
        "id": event_id,
        "object": "event",
        "type": type,
        "created_at": int(now.timestamp()),
        "data": data,
    }
    event = WebhookEvent(id=event_id, tenant_id=tenant_id, type=type, payload=payload, created_at=now)
    session.add(event)
    session.flush()  # its deliveries name it, and the unit of work orders rows only by relationships
    return event


def _delivery(event: WebhookEvent, endpoint_id: str, *, enqueued: bool = False) -> WebhookDelivery:
    now = utcnow()
    return WebhookDelivery(
        id=new_id("whdel"),
        tenant_id=event.tenant_id,
        endpoint_id=endpoint_id,
        event_id=event.id,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        enqueued_at=now if enqueued else None,
        created_at=now,
    )


def job_finished(session: Session, job_id: str, status: str) -> list[str]:
    """Queue the event of a job that just reached ``status`` for every enabled endpoint of its tenant
    that subscribed to it; returns the new deliveries' ids (none when nobody listens)."""
    type = _BY_STATUS.get(str(status))
    if type is None:
        return []
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant_id is None:
        return []
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.events).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    wanted = [endpoint_id for endpoint_id, events in endpoints if type in (events or [])]
    if not wanted:
        return []
    event = _event(session, tenant_id, type, {"id": job_id})
    deliveries = [_delivery(event, endpoint_id) for endpoint_id in wanted]
    session.add_all(deliveries)
    return [d.id for d in deliveries]


def ping(session: Session, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """A ``webhook.test`` event for ``endpoint`` alone (enabled or not), marked as published: the
    caller publishes its delivery task after the commit."""
    event = _event(session, endpoint.tenant_id, TEST_EVENT, {"id": endpoint.id})
    delivery = _delivery(event, endpoint.id, enqueued=True)
    session.add(delivery)
    return delivery


__all__ = ["CANCELLED", "EVENT_TYPES", "FAILED", "SUCCEEDED", "TEST_EVENT", "job_finished", "ping"]
