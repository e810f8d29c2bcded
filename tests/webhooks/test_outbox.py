"""The outbox: a job's end writes its webhook deliveries in the same transaction as the status change,
for the endpoints of its organization that want that event, and the reconciler republishes them."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from domain.db import session_scope, utcnow
from domain.jobs import lifecycle
from domain.jobs.models import Job
from domain.settings import Settings
from domain.webhooks import DELIVER_WEBHOOK, WebhookDelivery, WebhookEvent
from domain.webhooks.outbox import FAILED
from tests.webhooks.helpers import endpoint, job, tenant
from worker import reconcile, webhooks


def deliveries_of(settings: Settings, tenant_id: str) -> list[tuple[WebhookDelivery, WebhookEvent]]:
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(WebhookDelivery, WebhookEvent)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.tenant_id == tenant_id)
        ).all()
        return [(d, e) for d, e in rows]


class TestWrittenWithTheStatusChange:
    def test_failure_and_its_delivery_commit_together(self, settings: Settings) -> None:
        tenant_id = tenant(settings)
        wanted = endpoint(settings, tenant_id, "http://127.0.0.1:9/a")
        endpoint(settings, tenant_id, "http://127.0.0.1:9/b", events=("fine_tuning.job.succeeded",))
        endpoint(settings, tenant_id, "http://127.0.0.1:9/c", enabled=False)
        endpoint(settings, tenant(settings), "http://127.0.0.1:9/other-org")
        job_id = job(settings, tenant_id)
        with session_scope(settings.database_url) as session:
            lease = lifecycle.claim(session, job_id)
        assert lease is not None
        with session_scope(settings.database_url) as session:
            assert lifecycle.fail(session, lease, code="user_error", message="bad file", param=None)
            # Visible in the transaction that changed the status, before its commit.
            pending = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
            ).all()
            assert [d.endpoint_id for d in pending] == [wanted.id]
        rows = deliveries_of(settings, tenant_id)
        assert len(rows) == 1
        delivery, event = rows[0]
        assert (delivery.endpoint_id, delivery.status, delivery.attempts) == (wanted.id, "pending", 0)
        assert delivery.enqueued_at is None  # no task yet: published after the commit
        assert event.type == FAILED
        assert event.payload == {
            "id": event.id,
            "object": "event",
            "type": "fine_tuning.job.failed",
            "created_at": event.payload["created_at"],
            "data": {"id": job_id},
        }

    def test_rolled_back_status_change_leaves_no_delivery(self, settings: Settings) -> None:
        tenant_id = tenant(settings)
        endpoint(settings, tenant_id, "http://127.0.0.1:9/a")
        job_id = job(settings, tenant_id)
        with session_scope(settings.database_url) as session:
            lease = lifecycle.claim(session, job_id)
        assert lease is not None
        session = session_scope(settings.database_url)
        try:
            with session as s:
                assert lifecycle.fail(s, lease, code="error", message="boom", param=None)
                raise RuntimeError("the commit never happens")
        except RuntimeError:
            pass
        assert deliveries_of(settings, tenant_id) == []
        with session_scope(settings.database_url) as s:
            assert s.get_one(Job, job_id).status == "running"

    def test_cancel_of_a_queued_job(self, settings: Settings) -> None:
        tenant_id = tenant(settings)
        endpoint(settings, tenant_id, "http://127.0.0.1:9/a")
        job_id = job(settings, tenant_id)
        with session_scope(settings.database_url) as session:
            lifecycle.cancel(session, tenant_id, job_id)
        [(_, event)] = deliveries_of(settings, tenant_id)
        assert event.type == "fine_tuning.job.cancelled"

    def test_cancelling_is_not_an_end(self, settings: Settings) -> None:
        tenant_id = tenant(settings)
        endpoint(settings, tenant_id, "http://127.0.0.1:9/a")
        job_id = job(settings, tenant_id)
        with session_scope(settings.database_url) as session:
            lease = lifecycle.claim(session, job_id)
        assert lease is not None
        with session_scope(settings.database_url) as session:
            assert lifecycle.cancel(session, tenant_id, job_id).status == "cancelling"
        assert deliveries_of(settings, tenant_id) == []
        with session_scope(settings.database_url) as session:
            assert lifecycle.ack_cancel(session, lease)
        assert [e.type for _, e in deliveries_of(settings, tenant_id)] == ["fine_tuning.job.cancelled"]

    def test_dead_worker_failed_by_the_reconciler(self, settings: Settings) -> None:
        tenant_id = tenant(settings)
        endpoint(settings, tenant_id, "http://127.0.0.1:9/a")
        long_ago = utcnow() - timedelta(hours=1)
        job(settings, tenant_id, status="running", attempt=3, max_attempts=3, heartbeat_at=long_ago)
        with session_scope(settings.database_url) as session:
            lifecycle.rescue(session, lease_seconds=60)
        assert [e.type for _, e in deliveries_of(settings, tenant_id)] == ["fine_tuning.job.failed"]


class TestPublished:
    def test_dispatch_then_reconcile(self, settings: Settings) -> None:
        tenant_id = tenant(settings)
        endpoint(settings, tenant_id, "http://127.0.0.1:9/a")
        job_id = job(settings, tenant_id)
        with session_scope(settings.database_url) as session:
            lifecycle.cancel(session, tenant_id, job_id)
        [(delivery, _)] = deliveries_of(settings, tenant_id)
        # After the job's task: what the end wrote is published once.
        assert webhooks.dispatch(settings) >= 1
        with session_scope(settings.database_url) as session:
            assert session.get_one(WebhookDelivery, delivery.id).enqueued_at is not None
        sent: list[tuple[str, str]] = []
        reconcile.reconcile(settings, lambda name, arg: sent.append((name, arg)))
        assert (DELIVER_WEBHOOK, delivery.id) not in sent  # published a moment ago: not lost yet
        # A message lost for longer than republish_seconds is sent again by the reconciler.
        with session_scope(settings.database_url) as session:
            row = session.get_one(WebhookDelivery, delivery.id)
            row.enqueued_at = utcnow() - timedelta(seconds=settings.republish_seconds + 1)
        reconcile.reconcile(settings, lambda name, arg: sent.append((name, arg)))
        assert (DELIVER_WEBHOOK, delivery.id) in sent
        reconcile.reconcile(settings, lambda name, arg: sent.append((name, arg)))
        assert sent.count((DELIVER_WEBHOOK, delivery.id)) == 1


def test_finished_deliveries_leave_the_log_after_retention(settings: Settings) -> None:
    from domain.webhooks.deliveries import LOG_RETENTION, prune

    tenant_id = tenant(settings)
    endpoint(settings, tenant_id, "http://127.0.0.1:9/a")
    ids = []
    for _ in range(3):
        job_id = job(settings, tenant_id)
        with session_scope(settings.database_url) as session:
            lifecycle.cancel(session, tenant_id, job_id)
        ids.append(deliveries_of(settings, tenant_id)[-1][0].id)
    old = utcnow() - LOG_RETENTION - timedelta(days=1)
    with session_scope(settings.database_url) as session:
        for delivery_id, status, created in zip(
            ids, ["delivered", "failed", "pending"], [old, utcnow(), old], strict=True
        ):
            row = session.get_one(WebhookDelivery, delivery_id)
            row.status, row.created_at = status, created
            session.get_one(WebhookEvent, row.event_id).created_at = created
    with session_scope(settings.database_url) as session:
        prune(session)
    remaining = {d.id: e.id for d, e in deliveries_of(settings, tenant_id)}
    assert sorted(remaining) == sorted(ids[1:])  # a recent failure and an old pending one stay
    with session_scope(settings.database_url) as session:
        events = session.scalars(select(WebhookEvent.id).where(WebhookEvent.tenant_id == tenant_id)).all()
    assert sorted(events) == sorted(remaining.values())
