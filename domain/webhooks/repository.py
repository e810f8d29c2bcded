"""Queries on webhook endpoints and their deliveries; every one starts from the tenant's own rows."""

from __future__ import annotations

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from domain.auth.models import Tenant
from domain.pagination import keyset_page
from domain.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent


def _tenant_endpoints(tenant_id: str) -> Select[WebhookEndpoint]:
    return select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)


def get(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    return session.scalars(_tenant_endpoints(tenant_id).where(WebhookEndpoint.id == endpoint_id)).first()


def count(session: Session, tenant_id: str) -> int:
    stmt = select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    return int(session.scalar(stmt) or 0)


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise endpoint creation per tenant until commit, so the endpoint cap cannot be raced."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def page(
    session: Session, tenant_id: str, *, after: WebhookEndpoint | None, limit: int
) -> tuple[list[WebhookEndpoint], bool]:
    order = [WebhookEndpoint.created_at, WebhookEndpoint.id]
    return keyset_page(session, _tenant_endpoints(tenant_id), order, after, limit)


def remove(session: Session, endpoint: WebhookEndpoint) -> None:
    """Delete an endpoint with its deliveries and their attempts (events other endpoints share stay)."""
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)


def delivery(session: Session, tenant_id: str, delivery_id: str) -> WebhookDelivery | None:
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.id == delivery_id
    )
    return session.scalars(stmt).first()


def deliveries_page(
    session: Session, tenant_id: str, endpoint_id: str, *, after: WebhookDelivery | None, limit: int
) -> tuple[list[tuple[WebhookDelivery, str]], bool]:
    """The endpoint's deliveries, newest first, each with its event's type."""
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.endpoint_id == endpoint_id
    )
    rows, has_more = keyset_page(
        session, stmt, [WebhookDelivery.created_at, WebhookDelivery.id], after, limit
    )
    types = dict(event_types(session, list({row.event_id for row in rows})))
    return [(row, types.get(row.event_id, "")) for row in rows], has_more


def event_types(session: Session, event_ids: list[str]) -> list[tuple[str, str]]:
    """(event id, type) of these events."""
    if not event_ids:
        return []
    rows = session.execute(select(WebhookEvent.id, WebhookEvent.type).where(WebhookEvent.id.in_(event_ids)))
    return [(event_id, type) for event_id, type in rows]
