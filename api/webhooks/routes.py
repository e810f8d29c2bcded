"""``/v1/webhooks``: create, list, retrieve and delete endpoints; their delivery log; a test event."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import NotFound, QuotaExceeded, Unauthorized, error_responses
from api.webhooks import schemas, service
from domain.queue import publish
from domain.webhooks import DELIVER_WEBHOOK
from domain.webhooks.urls import WebhookRejected

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

WebhookId = Annotated[str, Path(min_length=1, max_length=64)]
Cursor = Annotated[str | None, Query(min_length=1, max_length=64)]
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", responses=error_responses(Unauthorized, WebhookRejected, QuotaExceeded))
def create_webhook(
    body: schemas.WebhookCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> schemas.Webhook:
    """Register an endpoint. The answer holds its signing secret, which is never shown again."""
    endpoint = service.create(session, tenant.id, settings, body)
    session.commit()
    return schemas.Webhook.of(endpoint, with_secret=True)


@router.get("", responses=error_responses(Unauthorized, NotFound))
def list_webhooks(
    session: SessionDep, tenant: TenantDep, after: Cursor = None, limit: Limit = 20
) -> schemas.WebhookList:
    return service.page(session, tenant.id, after=after, limit=limit)


@router.get("/{webhook_id}", responses=error_responses(Unauthorized, NotFound))
def retrieve_webhook(webhook_id: WebhookId, session: SessionDep, tenant: TenantDep) -> schemas.Webhook:
    return schemas.Webhook.of(service.get(session, tenant.id, webhook_id))


@router.delete("/{webhook_id}", responses=error_responses(Unauthorized, NotFound))
def delete_webhook(webhook_id: WebhookId, session: SessionDep, tenant: TenantDep) -> schemas.WebhookDeleted:
    """Delete an endpoint and its delivery log; deliveries still due are not sent."""
    service.delete(session, tenant.id, webhook_id)
    session.commit()
    return schemas.WebhookDeleted(id=webhook_id)


@router.get("/{webhook_id}/deliveries", responses=error_responses(Unauthorized, NotFound))
def list_deliveries(
    webhook_id: WebhookId, session: SessionDep, tenant: TenantDep, after: Cursor = None, limit: Limit = 20
) -> schemas.DeliveryList:
    """The endpoint's deliveries, newest first, each with its attempts."""
    return service.deliveries(session, tenant.id, webhook_id, after=after, limit=limit)


@router.post("/{webhook_id}/test", responses=error_responses(Unauthorized, NotFound))
def test_webhook(
    webhook_id: WebhookId, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> schemas.Delivery:
    """Send a ``webhook.test`` event to the endpoint (enabled or not); poll its delivery log."""
    delivery = service.ping(session, tenant.id, webhook_id)
    session.commit()
    publish(settings, DELIVER_WEBHOOK, delivery.id)  # after the commit: the worker must see the row
    return service.delivery(session, tenant.id, delivery.id)
