"""Per-tenant limits for prediction endpoints, in this process: a request rate and an in-flight admission.

* **Rate**: each tenant may make ``rate_per_minute`` prediction requests a minute, in bursts of up to
  that many (a token bucket per tenant).
* **In flight** (``Admission``): each tenant may have at most ``max_requests`` prediction requests in
  progress and ``max_cost`` of prediction cost (full-size items) queued or running at once. Past either,
  the request is refused at once (429, ``Retry-After``), before it queues: one tenant's flood can fill
  neither the batchers' queues nor the server's worker threads that other tenants' requests need. A
  request whose cost alone is over ``max_cost`` is admitted when its tenant has nothing else in flight,
  so every request the body limits accept can run.

Both live in the replica's memory, so N replicas allow N times as much; a shared limit belongs in front
of them (an API gateway) or in Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from api.errors import RateLimited

#: Retry-After of a request refused for in-flight work: predictions of a full batch take about a second.
ADMISSION_RETRY_S = 1.0


class Admission:
    """Requests and cost in flight, per tenant id."""

    def __init__(self) -> None:
        self._inflight: dict[str, tuple[int, float]] = {}  # tenant -> (requests, cost)
        self._lock = threading.Lock()

    def inflight(self, tenant_id: str) -> tuple[int, float]:
        """``(requests, cost)`` in flight for ``tenant_id`` now."""
        with self._lock:
            return self._inflight.get(tenant_id, (0, 0.0))

    @contextmanager
    def admitted(self, tenant_id: str, cost: float, max_cost: float, max_requests: int) -> Iterator[None]:
        """Hold ``cost`` and one request of ``tenant_id``'s allowance while the block runs (0: no limit).

        Raises:
            RateLimited: the tenant already has ``max_requests`` requests, or would go over
                ``max_cost`` (unless it has nothing in flight).
        """
        with self._lock:
            requests, held = self._inflight.get(tenant_id, (0, 0.0))
            if max_requests and requests >= max_requests:
                raise RateLimited(
                    f"over {max_requests} prediction requests in progress for this organization",
                    param="concurrency",
                    retry_after=ADMISSION_RETRY_S,
                )
            if max_cost and requests and held + cost > max_cost:
                raise RateLimited(
                    f"predictions in progress for this organization would cost {held + cost:.1f} items, "
                    f"over its {max_cost:g} in flight",
                    param="inflight_cost",
                    retry_after=ADMISSION_RETRY_S,
                )
            self._inflight[tenant_id] = (requests + 1, held + cost)
        try:
            yield
        finally:
            with self._lock:
                requests, held = self._inflight[tenant_id]
                if requests <= 1:
                    del self._inflight[tenant_id]
                else:
                    self._inflight[tenant_id] = (requests - 1, max(0.0, held - cost))


class RateLimiter:
    """Token buckets keyed by tenant id, and the tenants' in-flight ``admission``.

    Args:
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.admission = Admission()
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, tenant_id: str, rate_per_minute: int) -> None:
        """Take one token for ``tenant_id``, whose bucket refills at ``rate_per_minute`` (0: no limit).

        Raises:
            RateLimited: the bucket is empty; ``retry_after`` says when the next token comes.
        """
        if rate_per_minute <= 0:
            return
        per_second = rate_per_minute / 60.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(tenant_id, (float(rate_per_minute), now))
            tokens = min(float(rate_per_minute), tokens + (now - at) * per_second)
            if tokens < 1.0:
                self._buckets[tenant_id] = (tokens, now)
                raise RateLimited(
                    f"over {rate_per_minute} prediction requests per minute for this organization",
                    param="rate_limit",
                    retry_after=(1.0 - tokens) / per_second,
                )
            self._buckets[tenant_id] = (tokens - 1.0, now)
