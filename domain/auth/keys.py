"""API keys: ``grft-<random>``, shown once, stored as SHA-256 (keys are 256-bit random, so a fast
hash is enough: there is nothing to brute-force)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy.orm import Session

from domain.auth import repository
from domain.auth.models import ApiKey, Tenant
from domain.errors import Unauthorized
from domain.ids import new_id

LOCAL_TENANT = "local"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> str:
    """Create the tenant if needed and a new key for it; returns the key in clear (only time)."""
    tenant = repository.tenant_by_name(session, tenant_name)
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=tenant_name)
        session.add(tenant)
        session.flush()
    key = f"grft-{secrets.token_urlsafe(32)}"
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:9]))
    session.flush()
    return key


def authenticate(session: Session, authorization: str | None) -> Tenant:
    """The tenant of a ``Bearer`` key, or ``Unauthorized``."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", param="Authorization")
    record = repository.key_by_hash(session, hash_key(authorization[7:].strip()))
    if record is None:
        raise Unauthorized("invalid API key", param="Authorization")
    tenant = session.get(Tenant, record.tenant_id)
    if tenant is None:
        raise Unauthorized("invalid API key", param="Authorization")
    return tenant


def local_tenant(session: Session) -> Tenant:
    """The single tenant of an auth-off embedded server bound to localhost."""
    tenant = repository.tenant_by_name(session, LOCAL_TENANT)
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=LOCAL_TENANT)
        session.add(tenant)
        session.flush()
    return tenant
