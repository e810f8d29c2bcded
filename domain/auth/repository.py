"""Queries on tenants and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from domain.auth.models import ApiKey, Tenant


def tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def key_by_hash(session: Session, key_hash: str) -> ApiKey | None:
    """The key with this hash, revoked and expired ones included (the caller says why they fail)."""
    return session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()


def key_by_id(session: Session, key_id: str) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key with its tenant's name (of one tenant when ``tenant_name`` is given), oldest first."""
    stmt = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_name is not None:
        stmt = stmt.where(Tenant.name == tenant_name)
    rows = session.execute(stmt.order_by(ApiKey.created_at, ApiKey.id)).all()
    return [(key, name) for key, name in rows]


def revoke(session: Session, key_id: str, now: datetime) -> bool:
    """Set ``revoked_at`` unless the key is already revoked; True when this call revoked it."""
    stmt = update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now)
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    return bool(cast("CursorResult[Any]", result).rowcount)


def touch(session: Session, key_id: str, now: datetime, not_since: datetime) -> None:
    """Record a use of the key, unless one was recorded after ``not_since``."""
    stmt = (
        update(ApiKey)
        .where(ApiKey.id == key_id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= not_since))
        .values(last_used_at=now)
    )
    session.execute(stmt, execution_options={"synchronize_session": False})
