"""Rows the webhook tests need, committed to the test database as the API and the worker would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import Any

from domain.auth.models import Tenant
from domain.db import session_scope, utcnow
from domain.ids import new_id
from domain.jobs.models import Job
from domain.settings import Settings
from domain.webhooks import WebhookEndpoint
from domain.webhooks.outbox import EVENT_TYPES
from domain.webhooks.signing import new_secret


def tenant(settings: Settings) -> str:
    with session_scope(settings.database_url) as session:
        row = Tenant(id=new_id("tenant"), name=f"webhooks-{uuid.uuid4().hex}")
        session.add(row)
    return row.id


def endpoint(
    settings: Settings,
    tenant_id: str,
    url: str,
    *,
    events: tuple[str, ...] = EVENT_TYPES,
    enabled: bool = True,
) -> WebhookEndpoint:
    with session_scope(settings.database_url) as session:
        row = WebhookEndpoint(
            id=new_id("wh"),
            tenant_id=tenant_id,
            url=url,
            events=list(events),
            secret=new_secret(),
            enabled=enabled,
            created_at=utcnow(),
        )
        session.add(row)
    return row


def job(settings: Settings, tenant_id: str, **fields: Any) -> str:
    job_id = new_id("ftjob")
    with session_scope(settings.database_url) as session:
        values: dict[str, Any] = {"model": "tiny-bert", "training_file": "file-x", "status": "queued"}
        session.add(Job(id=job_id, tenant_id=tenant_id, enqueued_at=utcnow(), **{**values, **fields}))
    return job_id


def signature_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification written out from the spec, independently of ``domain.webhooks``."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split(" "))
