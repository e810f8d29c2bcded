"""Delivering a webhook to a real HTTP receiver on 127.0.0.1: the Standard Webhooks signature checked
independently, retries with exponential backoff, giving up on a 4xx, no redirects followed, a bounded
wait, the answer truncated in the log, and the network policy applied again at sending time."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from domain.db import session_scope, utcnow
from domain.settings import Settings
from domain.webhooks import WebhookAttempt, WebhookDelivery
from domain.webhooks.outbox import job_finished
from domain.webhooks.signing import sign, verify
from tests.webhooks.conftest import Receiver
from tests.webhooks.helpers import endpoint, job, signature_valid, tenant
from worker import webhooks


def pending(settings: Settings, url: str, **options: Any) -> tuple[str, str, str]:
    """A pending delivery of a ``fine_tuning.job.succeeded`` event: (delivery id, secret, job id)."""
    tenant_id = tenant(settings)
    target = endpoint(settings, tenant_id, url, **options)
    job_id = job(settings, tenant_id, status="succeeded")
    with session_scope(settings.database_url) as session:
        [delivery_id] = job_finished(session, job_id, "succeeded")
    return delivery_id, target.secret, job_id


def row(settings: Settings, delivery_id: str) -> WebhookDelivery:
    with session_scope(settings.database_url) as session:
        return session.get_one(WebhookDelivery, delivery_id)


def attempts(settings: Settings, delivery_id: str) -> list[WebhookAttempt]:
    with session_scope(settings.database_url) as session:
        stmt = select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
        return list(session.scalars(stmt.order_by(WebhookAttempt.attempt)))


class Retries:
    """Records the retries ``deliver`` publishes (delivery id, countdown)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, delivery_id: str, countdown: float) -> None:
        self.calls.append((delivery_id, countdown))


class TestSigned:
    def test_reaches_the_receiver_with_a_valid_signature(
        self, settings: Settings, receiver: Receiver
    ) -> None:
        delivery_id, secret, job_id = pending(settings, receiver.url)
        assert webhooks.deliver(settings, delivery_id) == "delivered"
        [request] = receiver.requests
        assert request.path == "/hooks/grft"
        assert request.headers["content-type"] == "application/json"
        assert signature_valid(secret, request.headers, request.body)
        assert not signature_valid(secret, request.headers, request.body.replace(b"succeeded", b"failed"))
        body = json.loads(request.body)
        assert body == {
            "id": request.headers["webhook-id"],
            "object": "event",
            "type": "fine_tuning.job.succeeded",
            "created_at": body["created_at"],
            "data": {"id": job_id},
        }
        assert abs(int(request.headers["webhook-timestamp"]) - int(utcnow().timestamp())) < 300
        delivered = row(settings, delivery_id)
        assert (delivered.status, delivered.attempts, delivered.last_status_code) == ("delivered", 1, 200)
        assert delivered.delivered_at is not None
        [attempt] = attempts(settings, delivery_id)
        assert (attempt.attempt, attempt.status_code, attempt.response_body) == (1, 200, "ok")

    def test_signing_matches_the_standard_webhooks_example(self) -> None:
        # The worked example of the Standard Webhooks specification (its published test vector).
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        body = b'{"test": 2432232314}'
        expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
        assert verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, f"v1,bogus {expected}")

    def test_a_done_delivery_is_not_sent_again(self, settings: Settings, receiver: Receiver) -> None:
        delivery_id, _, _ = pending(settings, receiver.url)
        assert webhooks.deliver(settings, delivery_id) == "delivered"
        assert webhooks.deliver(settings, delivery_id) == "skipped"  # a duplicate message
        assert len(receiver.requests) == 1


class TestRetries:
    def test_backoff_on_500_then_delivered(self, settings: Settings, receiver: Receiver) -> None:
        receiver.answer(500, 500, 200)
        delivery_id, secret, _ = pending(settings, receiver.url)
        retries = Retries()
        start = utcnow()
        base = settings.webhook_backoff_seconds

        assert webhooks.deliver(settings, delivery_id, now=start, publish_retry=retries) == "retry"
        first = row(settings, delivery_id)
        assert (first.status, first.attempts, first.last_status_code) == ("pending", 1, 500)
        assert first.next_attempt_at == start + timedelta(seconds=base)
        # Not due yet: a message arriving early sends nothing.
        assert webhooks.deliver(settings, delivery_id, now=start, publish_retry=retries) == "skipped"

        second_at = start + timedelta(seconds=base)
        assert webhooks.deliver(settings, delivery_id, now=second_at, publish_retry=retries) == "retry"
        assert row(settings, delivery_id).next_attempt_at == second_at + timedelta(seconds=2 * base)

        third_at = second_at + timedelta(seconds=2 * base)
        assert webhooks.deliver(settings, delivery_id, now=third_at, publish_retry=retries) == "delivered"
        assert retries.calls == [(delivery_id, base), (delivery_id, 2 * base)]
        assert [a.status_code for a in attempts(settings, delivery_id)] == [500, 500, 200]
        assert row(settings, delivery_id).status == "delivered"
        # Every attempt carries the same message id, each one signed afresh.
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
        assert all(signature_valid(secret, r.headers, r.body) for r in receiver.requests)

    def test_gives_up_on_410(self, settings: Settings, receiver: Receiver) -> None:
        receiver.answer(410, body=b"gone")
        delivery_id, _, _ = pending(settings, receiver.url)
        retries = Retries()
        assert webhooks.deliver(settings, delivery_id, publish_retry=retries) == "failed"
        assert retries.calls == []
        failed = row(settings, delivery_id)
        assert (failed.status, failed.attempts, failed.last_status_code) == ("failed", 1, 410)
        assert webhooks.deliver(settings, delivery_id, now=utcnow() + timedelta(days=1)) == "skipped"
        assert len(receiver.requests) == 1

    @pytest.mark.parametrize("status", [408, 429, 503])
    def test_retryable_statuses(self, settings: Settings, receiver: Receiver, status: int) -> None:
        receiver.answer(status)
        delivery_id, _, _ = pending(settings, receiver.url)
        assert webhooks.deliver(settings, delivery_id, publish_retry=Retries()) == "retry"

    def test_gives_up_after_max_attempts(self, settings: Settings, receiver: Receiver) -> None:
        receiver.answer(500)
        delivery_id, _, _ = pending(settings, receiver.url)
        retries = Retries()
        moment = utcnow()
        outcomes = []
        for _ in range(settings.webhook_max_attempts + 1):
            outcomes.append(webhooks.deliver(settings, delivery_id, now=moment, publish_retry=retries))
            moment += timedelta(days=1)
        assert outcomes == ["retry"] * (settings.webhook_max_attempts - 1) + ["failed", "skipped"]
        base = settings.webhook_backoff_seconds
        assert [c for _, c in retries.calls] == [
            base * 2**i for i in range(settings.webhook_max_attempts - 1)
        ]
        assert len(receiver.requests) == settings.webhook_max_attempts


class TestTransport:
    def test_redirect_not_followed(self, settings: Settings, receiver: Receiver) -> None:
        receiver.answer(302, headers={"location": "http://127.0.0.1:1/elsewhere"})
        delivery_id, _, _ = pending(settings, receiver.url)
        assert webhooks.deliver(settings, delivery_id, publish_retry=Retries()) == "retry"
        assert len(receiver.requests) == 1
        assert row(settings, delivery_id).last_status_code == 302

    def test_response_body_truncated_in_the_log(self, settings: Settings, receiver: Receiver) -> None:
        receiver.answer(200, body=b"x" * 100_000)
        delivery_id, _, _ = pending(settings, receiver.url)
        assert webhooks.deliver(settings, delivery_id) == "delivered"
        [attempt] = attempts(settings, delivery_id)
        assert attempt.response_body == "x" * 1024

    def test_timeout(self, settings: Settings, receiver: Receiver) -> None:
        receiver.delay_s = 30  # longer than the timeout; released when the receiver stops
        quick = settings.model_copy(update={"webhook_timeout_seconds": 0.5})
        delivery_id, _, _ = pending(quick, receiver.url)
        assert webhooks.deliver(quick, delivery_id, publish_retry=Retries()) == "retry"
        failed = row(quick, delivery_id)
        assert (failed.last_status_code, failed.last_error) == (None, "timed out")

    def test_nobody_listening(self, settings: Settings) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed when the block ends: nothing listens there
        delivery_id, _, _ = pending(settings, f"http://127.0.0.1:{port}/x")
        assert webhooks.deliver(settings, delivery_id, publish_retry=Retries()) == "retry"
        assert row(settings, delivery_id).last_error == "could not connect"


class TestPolicyAtSendingTime:
    def test_name_now_resolving_to_a_private_address_is_refused(
        self, settings: Settings, receiver: Receiver
    ) -> None:
        # A DNS answer that changed since the endpoint was created (rebinding): no DNS server here, so
        # the resolver answers for the name itself.
        def rebound(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
            assert host == "hooks.example.com"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

        delivery_id, _, _ = pending(settings, "https://hooks.example.com/grft")
        retries = Retries()
        assert webhooks.deliver(settings, delivery_id, resolve=rebound, publish_retry=retries) == "failed"
        failed = row(settings, delivery_id)
        assert failed.last_error is not None
        assert failed.last_error.startswith("refused by the network policy")
        assert retries.calls == []

    def test_connects_to_the_checked_address_with_the_name_as_host(
        self, settings: Settings, receiver: Receiver
    ) -> None:
        # A name the operator allows, resolved once by the policy: the request goes to that address and
        # carries the name in its Host header (no second lookup could send it elsewhere).
        port = int(receiver.url.split(":")[2].split("/")[0])
        lookups: list[str] = []

        def resolver(host: str, *args: Any, **kwargs: Any) -> list[Any]:
            lookups.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

        allowed = settings.model_copy(update={"webhook_allow_hosts": ["hooks.internal"]})
        delivery_id, _, _ = pending(allowed, f"http://hooks.internal:{port}/grft?x=1")
        assert webhooks.deliver(allowed, delivery_id, resolve=resolver) == "delivered"
        assert lookups == ["hooks.internal"]
        [request] = receiver.requests
        assert request.headers["host"] == f"hooks.internal:{port}"
        assert request.path == "/grft?x=1"

    def test_unresolvable_name_is_retried(self, settings: Settings) -> None:
        def nxdomain(*args: Any, **kwargs: Any) -> list[Any]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        delivery_id, _, _ = pending(settings, "https://hooks.example.com/grft")
        assert webhooks.deliver(settings, delivery_id, resolve=nxdomain, publish_retry=Retries()) == "retry"
        assert row(settings, delivery_id).last_error == "the host could not be resolved"

    def test_disabled_endpoint_gets_no_job_event(self, settings: Settings, receiver: Receiver) -> None:
        tenant_id = tenant(settings)
        target = endpoint(settings, tenant_id, receiver.url)
        job_id = job(settings, tenant_id, status="succeeded")
        with session_scope(settings.database_url) as session:
            [delivery_id] = job_finished(session, job_id, "succeeded")
            session.get_one(type(target), target.id).enabled = False
        assert webhooks.deliver(settings, delivery_id) == "failed"
        assert receiver.requests == []


def test_claim_expires_when_the_sender_dies(settings: Settings, receiver: Receiver) -> None:
    from domain.webhooks import deliveries

    delivery_id, _, _ = pending(settings, receiver.url)
    now = utcnow()
    with session_scope(settings.database_url) as session:
        claim = deliveries.claim(session, delivery_id, hold_s=60, max_attempts=5, now=now)
    assert claim is not None
    # The claimant died without recording: the delivery is due again once the hold is over.
    assert webhooks.deliver(settings, delivery_id, now=now + timedelta(seconds=30)) == "skipped"
    later: datetime = now + timedelta(seconds=61)
    assert webhooks.deliver(settings, delivery_id, now=later) == "delivered"
    assert [a.attempt for a in attempts(settings, delivery_id)] == [2]
    with session_scope(settings.database_url) as session:  # the dead claimant's record is refused
        assert not deliveries.record(session, claim, "delivered", status_code=200)
