"""Request and response shapes of ``/v1/webhooks``.

An endpoint's signing secret is in the answer to its creation only; every later read leaves it out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.pagination import CursorPage
from domain.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from domain.webhooks.outbox import EVENT_TYPES

EventType = Literal["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
ALL_EVENTS: list[EventType] = [
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
]
assert ALL_EVENTS == list(EVENT_TYPES)  # noqa: S101 - the outbox's list, spelled for the schema


def unix(moment: datetime) -> int:
    """Seconds since the epoch; SQLite hands back naive datetimes, which are UTC here."""
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, max_length=2048, description="https:// (or http://) URL that receives events"
    )
    events: list[EventType] = Field(
        default_factory=lambda: list(ALL_EVENTS),
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="The events to send; all of them by default",
    )
    description: str | None = Field(default=None, max_length=256)
    enabled: bool = True


class Webhook(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    url: str
    events: list[str]
    enabled: bool
    description: str | None
    # Only in the answer to the creation: keep it, it is never shown again.
    secret: str | None = None

    @classmethod
    def of(cls, endpoint: WebhookEndpoint, *, with_secret: bool = False) -> Webhook:
        return cls(
            id=endpoint.id,
            created_at=unix(endpoint.created_at),
            url=endpoint.url,
            events=list(endpoint.events or []),
            enabled=endpoint.enabled,
            description=endpoint.description,
            secret=endpoint.secret if with_secret else None,
        )


class WebhookList(CursorPage[Webhook]):
    pass


class WebhookDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: Literal[True] = True


class DeliveryAttempt(BaseModel):
    attempt: int
    created_at: int
    status_code: int | None
    error: str | None
    # The first bytes of the endpoint's answer (at most 1024 characters).
    response_body: str | None
    duration_ms: int

    @classmethod
    def of(cls, row: WebhookAttempt) -> DeliveryAttempt:
        return cls(
            attempt=row.attempt,
            created_at=unix(row.created_at),
            status_code=row.status_code,
            error=row.error,
            response_body=row.response_body,
            duration_ms=row.duration_ms,
        )


class Delivery(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    created_at: int
    last_attempt_at: int | None
    next_attempt_at: int | None
    delivered_at: int | None
    last_status_code: int | None
    last_error: str | None
    attempt_log: list[DeliveryAttempt]

    @classmethod
    def of(cls, row: WebhookDelivery, event_type: str, attempts: list[WebhookAttempt]) -> Delivery:
        waiting = row.status in ("pending", "sending")
        return cls(
            id=row.id,
            webhook_id=row.endpoint_id,
            event_id=row.event_id,
            event_type=event_type,
            status=row.status,  # type: ignore[arg-type]  # the column holds only these
            attempts=row.attempts,
            created_at=unix(row.created_at),
            last_attempt_at=unix(row.last_attempt_at) if row.last_attempt_at else None,
            next_attempt_at=unix(row.next_attempt_at) if waiting else None,
            delivered_at=unix(row.delivered_at) if row.delivered_at else None,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            attempt_log=[DeliveryAttempt.of(a) for a in attempts],
        )


class DeliveryList(CursorPage[Delivery]):
    pass
