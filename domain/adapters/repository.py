"""Queries on adapters. Every read starts from ``_owned``: a tenant never sees another's rows."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from domain.adapters.models import Adapter
from domain.pagination import keyset_page


def _owned(tenant_id: str) -> Select[Adapter]:
    return select(Adapter).where(Adapter.tenant_id == tenant_id)


def get(session: Session, tenant_id: str, adapter_id: str) -> Adapter | None:
    return session.scalars(_owned(tenant_id).where(Adapter.id == adapter_id)).first()


def page(
    session: Session, tenant_id: str, *, after: Adapter | None, limit: int
) -> tuple[list[Adapter], bool]:
    """Newest first; ``after`` is the last row of the previous page. Returns ``(rows, has_more)``
    (``domain.pagination``'s contract)."""
    return keyset_page(session, _owned(tenant_id), (Adapter.created_at, Adapter.id), after, limit)


def delete(session: Session, adapter: Adapter) -> None:
    session.delete(adapter)
    session.flush()
