"""API keys: ``grft-<random>``, shown once, stored as SHA-256 (keys are 256-bit random, so a fast
hash is enough: there is nothing to brute-force).

A key works until it is revoked or expires; either answers 401 with a message that says which. Its
last use is recorded at most once per ``LAST_USED_RESOLUTION``, in a transaction of its own, so that a
request never holds a lock on its key's row (nor, on SQLite, the database's write lock) while it runs.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from domain.auth import repository
from domain.auth.models import ApiKey, Tenant
from domain.db import utcnow
from domain.errors import ApiKeyExpired, ApiKeyRevoked, NotFound, Unauthorized
from domain.ids import new_id

log = logging.getLogger(__name__)

LOCAL_TENANT = "local"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def aware(moment: datetime) -> datetime:
    """``moment`` as UTC-aware (SQLite gives back naive datetimes; every stored time is UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def issue_key(
    session: Session, tenant_name: str, *, name: str | None = None, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create the tenant if needed and a new key for it; returns the row and the key in clear (the
    only time it exists in clear)."""
    tenant = repository.tenant_by_name(session, tenant_name)
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=tenant_name)
        session.add(tenant)
        session.flush()
    key = f"grft-{secrets.token_urlsafe(32)}"
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant.id,
        key_hash=hash_key(key),
        prefix=key[:9],
        name=name,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, key


def create_key(
    session: Session, tenant_name: str, *, name: str | None = None, expires_at: datetime | None = None
) -> str:
    """``issue_key``, returning only the key in clear."""
    return issue_key(session, tenant_name, name=name, expires_at=expires_at)[1]


def authenticate(session: Session, authorization: str | None, now: datetime | None = None) -> Tenant:
    """The tenant of a ``Bearer`` key.

    Raises:
        Unauthorized: no key, or one that does not exist.
        ApiKeyRevoked, ApiKeyExpired: a key that did work once (both are 401).
    """
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", param="Authorization")
    record = repository.key_by_hash(session, hash_key(authorization[7:].strip()))
    if record is None:
        raise Unauthorized("invalid API key", param="Authorization")
    now = now or utcnow()
    if record.revoked_at is not None:
        raise ApiKeyRevoked(
            f"API key {record.prefix}… was revoked on {_day(record.revoked_at)}; ask for a new key",
            param="Authorization",
        )
    if record.expires_at is not None and aware(record.expires_at) <= now:
        raise ApiKeyExpired(
            f"API key {record.prefix}… expired on {_day(record.expires_at)}; ask for a new key",
            param="Authorization",
        )
    tenant = session.get(Tenant, record.tenant_id)
    if tenant is None:
        raise Unauthorized("invalid API key", param="Authorization")
    if record.last_used_at is None or aware(record.last_used_at) <= now - LAST_USED_RESOLUTION:
        _record_use(session, record.id, now)
    return tenant


def _day(moment: datetime) -> str:
    return aware(moment).strftime("%Y-%m-%d %H:%M UTC")


def _record_use(session: Session, key_id: str, now: datetime) -> None:
    # Best effort: a key that cannot be marked as used still authenticates.
    try:
        with Session(bind=session.get_bind()) as own, own.begin():
            repository.touch(own, key_id, now, not_since=now - LAST_USED_RESOLUTION)
    except SQLAlchemyError as exc:
        log.warning("could not record the use of API key %s: %s", key_id, exc)


def local_tenant(session: Session) -> Tenant:
    """The single tenant of an auth-off embedded server bound to localhost."""
    tenant = repository.tenant_by_name(session, LOCAL_TENANT)
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=LOCAL_TENANT)
        session.add(tenant)
        session.flush()
    return tenant


# --- administration (the ``grft keys`` commands) ------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """What ``grft keys list`` shows of a key: never the key, nor its hash."""

    id: str
    name: str | None
    tenant: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey, tenant: str) -> KeyInfo:
        def moment(value: datetime | None) -> datetime | None:
            return aware(value) if value is not None else None

        return cls(
            id=row.id,
            name=row.name,
            tenant=tenant,
            prefix=row.prefix,
            created_at=aware(row.created_at),
            expires_at=moment(row.expires_at),
            last_used_at=moment(row.last_used_at),
            revoked_at=moment(row.revoked_at),
        )

    def status(self, now: datetime) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self, now: datetime) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "name": self.name,
            "tenant": self.tenant,
            "prefix": self.prefix,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
            "status": self.status(now),
        }


def list_keys(session: Session, tenant_name: str | None = None) -> list[KeyInfo]:
    """Every key (of one tenant when ``tenant_name`` is given), oldest first.

    Raises:
        NotFound: no tenant is named ``tenant_name``.
    """
    if tenant_name is not None and repository.tenant_by_name(session, tenant_name) is None:
        raise NotFound(f"no tenant named {tenant_name!r}", param="tenant")
    return [KeyInfo.of(row, tenant) for row, tenant in repository.keys(session, tenant_name)]


def revoke_key(session: Session, key_id: str, now: datetime | None = None) -> tuple[KeyInfo, bool]:
    """Revoke a key; returns it and whether this call revoked it (False: it already was).

    Raises:
        NotFound: no key has this id.
    """
    revoked = repository.revoke(session, key_id, now or utcnow())
    row = repository.key_by_id(session, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}", param="key_id")
    session.refresh(row)
    tenant = session.get(Tenant, row.tenant_id)
    return KeyInfo.of(row, tenant.name if tenant is not None else "?"), revoked
