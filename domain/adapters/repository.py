"""Queries on adapters. Every read starts from ``_owned``: a tenant never sees another's rows."""

from __future__ import annotations

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from domain.adapters.models import Adapter


def _owned(tenant_id: str) -> Select[Adapter]:
    return select(Adapter).where(Adapter.tenant_id == tenant_id)


def get(session: Session, tenant_id: str, adapter_id: str) -> Adapter | None:
    return session.scalars(_owned(tenant_id).where(Adapter.id == adapter_id)).first()


def page(session: Session, tenant_id: str, *, limit: int, after: Adapter | None = None) -> list[Adapter]:
    """Up to ``limit`` adapters, newest first, strictly after the cursor row ``after``.

    Ordered by ``(created_at, id)`` so that rows created in the same instant still page stably.
    """
    stmt = _owned(tenant_id)
    if after is not None:
        stmt = stmt.where(
            or_(
                Adapter.created_at < after.created_at,
                and_(Adapter.created_at == after.created_at, Adapter.id < after.id),
            )
        )
    stmt = stmt.order_by(Adapter.created_at.desc(), Adapter.id.desc()).limit(limit)
    return list(session.scalars(stmt))


def delete(session: Session, adapter: Adapter) -> None:
    session.delete(adapter)
    session.flush()
