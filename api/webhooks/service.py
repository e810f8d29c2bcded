"""Webhook endpoints: create (URL checked by the network policy, a new secret), read, delete, test,
and the delivery log. Services never commit and never publish: the route does, in that order."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import NotFound, QuotaExceeded
from api.webhooks import schemas
from domain.db import utcnow
from domain.ids import new_id
from domain.settings import Settings
from domain.webhooks import WebhookDelivery, WebhookEndpoint, outbox, repository
from domain.webhooks import deliveries as delivery_state
from domain.webhooks.signing import new_secret
from domain.webhooks.urls import check_webhook_url

# Endpoints per organization: each job's end is one request per endpoint.
MAX_ENDPOINTS = 20


def create(
    session: Session, tenant_id: str, settings: Settings, body: schemas.WebhookCreate
) -> WebhookEndpoint:
    """A new endpoint with a fresh signing secret.

    Raises:
        WebhookRejected: the URL fails the network policy.
        QuotaExceeded: the organization already has ``MAX_ENDPOINTS``.
    """
    url = check_webhook_url(body.url, settings, field="url").uri
    repository.lock_tenant(session, tenant_id)
    if repository.count(session, tenant_id) >= MAX_ENDPOINTS:
        raise QuotaExceeded(f"an organization may have at most {MAX_ENDPOINTS} webhook endpoints")
    endpoint = WebhookEndpoint(
        id=new_id("wh"),
        tenant_id=tenant_id,
        url=url,
        events=list(dict.fromkeys(body.events)),
        secret=new_secret(),
        enabled=body.enabled,
        description=body.description,
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def get(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Raises ``NotFound`` for an unknown id (another organization's included)."""
    endpoint = repository.get(session, tenant_id, endpoint_id)
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", param="webhook_id")
    return endpoint


def page(session: Session, tenant_id: str, *, after: str | None, limit: int) -> schemas.WebhookList:
    cursor = get(session, tenant_id, after) if after is not None else None
    rows, has_more = repository.page(session, tenant_id, after=cursor, limit=limit)
    return schemas.WebhookList.of([schemas.Webhook.of(row) for row in rows], has_more)


def delete(session: Session, tenant_id: str, endpoint_id: str) -> None:
    repository.remove(session, get(session, tenant_id, endpoint_id))


def ping(session: Session, tenant_id: str, endpoint_id: str) -> WebhookDelivery:
    """A test event for the endpoint; the route publishes its delivery after the commit."""
    delivery = outbox.ping(session, get(session, tenant_id, endpoint_id))
    session.flush()
    return delivery


def deliveries(
    session: Session, tenant_id: str, endpoint_id: str, *, after: str | None, limit: int
) -> schemas.DeliveryList:
    get(session, tenant_id, endpoint_id)
    cursor = None
    if after is not None:
        cursor = repository.delivery(session, tenant_id, after)
        if cursor is None or cursor.endpoint_id != endpoint_id:
            raise NotFound(f"no delivery {after!r} of this endpoint", param="after")
    rows, has_more = repository.deliveries_page(session, tenant_id, endpoint_id, after=cursor, limit=limit)
    attempts = delivery_state.attempts_of(session, [row.id for row, _ in rows])
    data = [schemas.Delivery.of(row, event_type, attempts[row.id]) for row, event_type in rows]
    return schemas.DeliveryList.of(data, has_more)


def delivery(session: Session, tenant_id: str, delivery_id: str) -> schemas.Delivery:
    row = repository.delivery(session, tenant_id, delivery_id)
    if row is None:
        raise NotFound(f"no delivery {delivery_id!r}", param="delivery_id")
    event_types = dict(repository.event_types(session, [row.event_id]))
    attempts = delivery_state.attempts_of(session, [row.id])[row.id]
    return schemas.Delivery.of(row, event_types.get(row.event_id, ""), attempts)
