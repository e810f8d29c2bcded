"""A delivery's life: ``pending`` → (``sending`` → ``pending`` again)* → ``delivered`` | ``failed``.

Every move is one conditional UPDATE, so two workers holding a message for the same delivery (a
republished one, a duplicate from the broker) send it once per attempt: the claim bumps ``attempts``
and only the claimant's record, fenced by that number, is written. Functions take a session and never
commit; the caller commits, and publishes tasks only after that.

The verdict of an attempt (``verdict``): a 2xx answer delivers; a 4xx other than 408 (timeout) and
429 (too many requests) gives up, since the endpoint refuses this request as such; anything else
(another status, no answer) is tried again after ``backoff`` until ``max_attempts`` tries are spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

Verdict = Literal["delivered", "retry", "failed"]
PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"
# Statuses of a 4xx answer that still deserve another try: the receiver was slow or busy.
RETRYABLE_4XX = frozenset({408, 429})
# What the log keeps of an answer's body, and of an error message.
MAX_BODY_CHARS = 1024
MAX_ERROR_CHARS = 512
_SYNC = {"synchronize_session": False}
# Finished deliveries (and the events no delivery names any more) are kept this long for the log.
LOG_RETENTION = timedelta(days=30)


@dataclass(frozen=True)
class Claim:
    """One attempt of one delivery, held by the worker that claimed it."""

    delivery_id: str
    attempt: int
    url: str
    secret: str
    enabled: bool
    event_id: str
    payload: dict[str, Any]


def verdict(status_code: int | None, attempt: int, max_attempts: int) -> Verdict:
    """What an attempt that got ``status_code`` (None: no answer) means for its delivery."""
    if status_code is not None and 200 <= status_code < 300:
        return "delivered"
    if status_code is not None and 400 <= status_code < 500 and status_code not in RETRYABLE_4XX:
        return "failed"
    return "failed" if attempt >= max_attempts else "retry"


def backoff(attempt: int, base_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): ``base_s`` doubled each time."""
    return float(base_s * 2 ** (attempt - 1))


def claim(
    session: Session, delivery_id: str, *, hold_s: float, max_attempts: int, now: datetime | None = None
) -> Claim | None:
    """Take the next attempt of a due delivery for ``hold_s`` seconds; None when it is not due, done,
    out of attempts, or another worker holds it."""
    now = now or utcnow()
    row = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status.in_((PENDING, SENDING)),
            WebhookDelivery.next_attempt_at <= now,
            WebhookDelivery.attempts < max_attempts,
        )
        .values(
            status=SENDING,
            attempts=WebhookDelivery.attempts + 1,
            last_attempt_at=now,
            next_attempt_at=now + timedelta(seconds=hold_s),
        )
        .returning(WebhookDelivery.attempts, WebhookDelivery.endpoint_id, WebhookDelivery.event_id),
        execution_options=_SYNC,
    ).first()
    if row is None:
        return None
    attempt, endpoint_id, event_id = int(row[0]), row[1], row[2]
    endpoint = session.get_one(WebhookEndpoint, endpoint_id)
    event = session.get_one(WebhookEvent, event_id)
    return Claim(
        delivery_id=delivery_id,
        attempt=attempt,
        url=endpoint.url,
        secret=endpoint.secret,
        enabled=endpoint.enabled,
        event_id=event.id,
        payload=dict(event.payload),
    )


def record(
    session: Session,
    claim: Claim,
    outcome: Verdict,
    *,
    status_code: int | None = None,
    error: str | None = None,
    response_body: str | None = None,
    duration_ms: int = 0,
    retry_at: datetime | None = None,
    now: datetime | None = None,
) -> bool:
    """Log the attempt and move the delivery to ``outcome`` (``retry``: pending until ``retry_at``);
    False, and nothing written, when the claim no longer holds."""
    now = now or utcnow()
    values: dict[str, Any] = {"last_status_code": status_code, "last_error": _cut(error, MAX_ERROR_CHARS)}
    if outcome == "delivered":
        values.update(status=DELIVERED, delivered_at=now, last_error=None)
    elif outcome == "failed":
        values.update(status=FAILED)
    else:
        # The retry's task is published with a countdown: the reconciler waits as long before it resends.
        values.update(status=PENDING, next_attempt_at=retry_at or now, enqueued_at=retry_at or now)
    moved = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claim.delivery_id,
            WebhookDelivery.status == SENDING,
            WebhookDelivery.attempts == claim.attempt,
        )
        .values(**values)
        .returning(WebhookDelivery.id),
        execution_options=_SYNC,
    ).first()
    if moved is None:
        return False
    session.add(
        WebhookAttempt(
            delivery_id=claim.delivery_id,
            attempt=claim.attempt,
            status_code=status_code,
            error=_cut(error, MAX_ERROR_CHARS),
            response_body=_cut(response_body, MAX_BODY_CHARS),
            duration_ms=duration_ms,
            created_at=now,
        )
    )
    return True


def _cut(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def unpublished(session: Session, *, now: datetime | None = None) -> list[str]:
    """Mark the pending deliveries no task was ever published for (just written by a job's end) as
    published now, and return their ids: the caller publishes them after the commit."""
    now = now or utcnow()
    stmt = (
        update(WebhookDelivery)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.enqueued_at.is_(None))
        .values(enqueued_at=now)
        .returning(WebhookDelivery.id)
    )
    return [row[0] for row in session.execute(stmt, execution_options=_SYNC).all()]


def reconcile(
    session: Session, *, republish_after_s: float, max_attempts: int, now: datetime | None = None
) -> list[str]:
    """The reconciler's pass: a delivery whose sender died with its last attempt spent has failed;
    a due one whose task was published longer than ``republish_after_s`` ago (or never) is marked
    published again. Returns the ids to publish after the commit."""
    now = now or utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.status == SENDING,
            WebhookDelivery.next_attempt_at <= now,
            WebhookDelivery.attempts >= max_attempts,
        )
        .values(status=FAILED, last_error="the sender stopped before recording its last attempt"),
        execution_options=_SYNC,
    )
    prune(session, now=now)
    waiting = or_(
        WebhookDelivery.enqueued_at.is_(None),
        WebhookDelivery.enqueued_at < now - timedelta(seconds=republish_after_s),
    )
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.status.in_((PENDING, SENDING)),
            WebhookDelivery.next_attempt_at <= now,
            waiting,
        )
        .values(enqueued_at=now)
        .returning(WebhookDelivery.id)
    )
    return [row[0] for row in session.execute(stmt, execution_options=_SYNC).all()]


def prune(session: Session, *, now: datetime | None = None) -> int:
    """Delete deliveries finished longer than ``LOG_RETENTION`` ago (their attempts go with them) and
    the events left without a delivery; returns how many deliveries went."""
    cutoff = (now or utcnow()) - LOG_RETENTION
    gone = session.execute(
        delete(WebhookDelivery)
        .where(WebhookDelivery.status.in_((DELIVERED, FAILED)), WebhookDelivery.created_at < cutoff)
        .returning(WebhookDelivery.id),
        execution_options=_SYNC,
    ).all()
    orphan = ~exists().where(WebhookDelivery.event_id == WebhookEvent.id)
    session.execute(
        delete(WebhookEvent).where(WebhookEvent.created_at < cutoff, orphan), execution_options=_SYNC
    )
    return len(gone)


def attempts_of(session: Session, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    """The attempt rows of these deliveries, oldest first, by delivery id."""
    out: dict[str, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if not delivery_ids:
        return out
    rows = session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt, WebhookAttempt.seq)
    )
    for row in rows:
        out[row.delivery_id].append(row)
    return out


__all__ = [
    "DELIVERED",
    "FAILED",
    "PENDING",
    "SENDING",
    "Claim",
    "Verdict",
    "attempts_of",
    "prune",
    "backoff",
    "claim",
    "reconcile",
    "record",
    "unpublished",
    "verdict",
]
