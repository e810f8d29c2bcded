"""Sending webhook deliveries: one signed POST per attempt, to the addresses the network policy
checked, with no redirects followed and a bounded wait; the verdict and the retry schedule come from
``domain.webhooks.deliveries``.

Each attempt is claimed in the database first (so a duplicate message sends nothing), sent outside any
transaction, then recorded. A retry is published with a countdown of the backoff; the reconciler
republishes any that was lost (``due``), as it does for jobs.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy.orm import Session

from domain.dataset_uris import Resolver
from domain.db import session_scope, utcnow
from domain.queue import celery_client
from domain.settings import Settings
from domain.webhooks import DELIVER_WEBHOOK
from domain.webhooks import deliveries as state
from domain.webhooks.outbox import TEST_EVENT
from domain.webhooks.signing import sign
from domain.webhooks.urls import WebhookRejected, check_webhook_url, default_port

log = logging.getLogger(__name__)

USER_AGENT = "grft-webhooks/1"
# A claim outlives the attempt it covers: connect, send and read, each bounded by the timeout.
_HOLD_MARGIN_S = 30.0


@dataclass(frozen=True)
class Sent:
    """What one attempt got: an HTTP status (and the start of the body), or an error class."""

    status_code: int | None = None
    error: str | None = None
    body: str | None = None
    duration_ms: int = 0
    give_up: bool = False  # refused before sending: no later attempt would do better


def due(session: Session, settings: Settings) -> list[tuple[str, str]]:
    """The reconciler's share: deliveries whose task may be lost, as ``(task, delivery id)`` to publish
    after the commit."""
    ids = state.reconcile(
        session, republish_after_s=settings.republish_seconds, max_attempts=settings.webhook_max_attempts
    )
    return [(DELIVER_WEBHOOK, delivery_id) for delivery_id in ids]


def dispatch(settings: Settings) -> int:
    """Publish the deliveries a job's end just wrote (call it after the transaction that ended the job);
    returns how many. Never raises: what it misses, the reconciler sends."""
    try:
        with session_scope(settings.database_url) as session:
            ids = state.unpublished(session)
    except Exception:  # noqa: BLE001 - the database may be away: the reconciler picks these up
        log.warning("could not read the webhook outbox", exc_info=True)
        return 0
    for delivery_id in ids:
        publish(settings, delivery_id)
    return len(ids)


def publish(settings: Settings, delivery_id: str, countdown: float = 0.0) -> bool:
    """Send ``grft.deliver_webhook(delivery_id)``, after ``countdown`` seconds; False when it failed."""
    try:
        celery_client(settings).send_task(DELIVER_WEBHOOK, args=[delivery_id], countdown=countdown or None)
    except Exception:  # noqa: BLE001 - any broker failure: the reconciler republishes from the database
        log.warning("could not publish the webhook delivery %s", delivery_id, exc_info=True)
        return False
    return True


def deliver(
    settings: Settings,
    delivery_id: str,
    *,
    resolve: Resolver = socket.getaddrinfo,
    now: datetime | None = None,
    publish_retry: Any = None,
) -> str:
    """Make the next attempt of a delivery; returns ``delivered``, ``retry``, ``failed`` or ``skipped``
    (not due, done, or held by another worker). A retry is published with its backoff as countdown
    (``publish_retry(delivery_id, seconds)``, by default ``publish``)."""
    now = now or utcnow()
    hold = 3 * settings.webhook_timeout_seconds + _HOLD_MARGIN_S
    with session_scope(settings.database_url) as session:
        claim = state.claim(
            session, delivery_id, hold_s=hold, max_attempts=settings.webhook_max_attempts, now=now
        )
    if claim is None:
        return "skipped"
    if not claim.enabled and claim.payload.get("type") != TEST_EVENT:
        sent = Sent(error="the endpoint is disabled", give_up=True)
    else:
        sent = send(settings, claim, resolve)
    outcome = (
        "failed"
        if sent.give_up
        else state.verdict(sent.status_code, claim.attempt, settings.webhook_max_attempts)
    )
    delay = state.backoff(claim.attempt, settings.webhook_backoff_seconds)
    retry_at = now + timedelta(seconds=delay) if outcome == "retry" else None
    with session_scope(settings.database_url) as session:
        recorded = state.record(
            session,
            claim,
            outcome,
            status_code=sent.status_code,
            error=sent.error,
            response_body=sent.body,
            duration_ms=sent.duration_ms,
            retry_at=retry_at,
        )
    if not recorded:
        return "skipped"
    log.info(
        "webhook %s attempt %d: %s (%s)",
        delivery_id, claim.attempt, outcome, sent.status_code or sent.error,
    )  # fmt: skip
    if outcome == "retry":
        if publish_retry is None:
            publish(settings, delivery_id, delay)
        else:
            publish_retry(delivery_id, delay)
    return outcome


def send(settings: Settings, claim: state.Claim, resolve: Resolver = socket.getaddrinfo) -> Sent:
    """One signed POST of the claim's event to its endpoint."""
    body = json.dumps(claim.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": claim.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(claim.secret, claim.event_id, timestamp, body),
    }
    unresolved: list[bool] = []

    def resolve_once(*args: Any, **kwargs: Any) -> Any:
        try:
            return resolve(*args, **kwargs)
        except (OSError, UnicodeError):
            unresolved.append(True)
            raise

    try:
        checked = check_webhook_url(claim.url, settings, resolve=resolve_once)
    except WebhookRejected as exc:
        if unresolved:  # DNS may answer later: worth another attempt
            return Sent(error="the host could not be resolved")
        return Sent(error=f"refused by the network policy: {exc.message}", give_up=True)
    started = time.monotonic()
    sent = Sent(error="no address to connect to")
    for address in checked.addresses:
        sent = _post(settings, claim.url, address, default_port(checked), headers, body)
        if sent.error != "could not connect":
            break
    elapsed = int((time.monotonic() - started) * 1000)
    return Sent(sent.status_code, sent.error, sent.body, elapsed, sent.give_up)


def _post(
    settings: Settings, url: str, address: str, port: int, headers: dict[str, str], body: bytes
) -> Sent:
    """POST to ``url`` through ``address`` (no new lookup): the URL's host stays in the Host header and,
    for https, in the TLS server name that the certificate is checked against."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    target = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    timeout = httpx.Timeout(settings.webhook_timeout_seconds)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "POST", target, content=body, headers={**headers, "host": parts.netloc}, extensions=extensions
            )
            response = client.send(request, stream=True)
            try:
                text = _start_of(response)
            finally:
                response.close()
    except httpx.TimeoutException:
        return Sent(error="timed out")
    except httpx.ConnectError as exc:
        if isinstance(exc.__context__, ssl.SSLError) or "SSL" in type(exc.__context__).__name__:
            return Sent(error="TLS failed")
        return Sent(error="could not connect")
    except httpx.HTTPError:
        return Sent(error="the HTTP exchange failed")
    return Sent(status_code=response.status_code, body=text)


def _start_of(response: httpx.Response) -> str:
    """The first bytes of the answer's body, as text (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= state.MAX_BODY_CHARS:
            break
    return b"".join(chunks)[: state.MAX_BODY_CHARS].decode("utf-8", "replace")
