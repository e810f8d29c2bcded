"""Per-tenant request rate limit for prediction endpoints: a token bucket per tenant, in this process.

Each tenant may make ``rate_per_minute`` prediction requests a minute, in bursts of up to that many.
The buckets live in the replica's memory, so N replicas allow N times the rate; a shared limit belongs
in front of them (an API gateway) or in Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from api.errors import QuotaExceeded


class RateLimiter:
    """Token buckets keyed by tenant id.

    Args:
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, tenant_id: str, rate_per_minute: int) -> None:
        """Take one token for ``tenant_id``, whose bucket refills at ``rate_per_minute`` (0: no limit).

        Raises:
            QuotaExceeded: the bucket is empty; ``retry_after`` says when the next token comes.
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
                raise QuotaExceeded(
                    f"over {rate_per_minute} prediction requests per minute for this organization",
                    param="rate_limit",
                    retry_after=(1.0 - tokens) / per_second,
                )
            self._buckets[tenant_id] = (tokens - 1.0, now)
