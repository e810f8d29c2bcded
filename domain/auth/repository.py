"""Queries on tenants and API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.auth.models import ApiKey, Tenant


def tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def key_by_hash(session: Session, key_hash: str) -> ApiKey | None:
    return session.scalars(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).first()
