"""Prometheus metrics on ``/metrics``: prediction requests, latency, batch sizes and the adapter cache.

Each app gets its own ``CollectorRegistry`` (several apps in one process, as in tests, never collide).
Request metrics come from a small ASGI middleware on the prediction routes; batch metrics from the
inference service's batchers; cache counters are read from its cache at scrape time. The ``Metrics``
object is one of the app's services, built by its lifespan (``api.main``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grft_core.serving import AdapterCache, BatchRecord

_PREDICT_PATHS = {
    "predictions": re.compile(r"^/v1/predictions$"),
    "adapter_predict": re.compile(r"^/v1/adapters/[^/]+/predict$"),
}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The app's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "grft_predict_requests",
            "Prediction requests by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "grft_predict_request_seconds",
            "Prediction request latency.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_items = Histogram(
            "grft_inference_batch_items",
            "Items per forward pass.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "grft_inference_batch_requests",
            "Requests gathered into one forward pass.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "grft_inference_batch_seconds",
            "Forward pass time.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def on_batch(self, record: BatchRecord) -> None:
        """Record one forward pass of a batcher."""
        self.batch_items.observe(record.items)
        self.batch_requests.observe(record.requests)
        self.batch_seconds.observe(record.seconds)


class CacheCollector(Collector):
    """The adapter cache's counters and size, read from the inference service at scrape time."""

    def __init__(self, cache: AdapterCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Any]:
        stats = self.cache.stats
        for name, doc, value in (
            ("hits", "Adapter cache hits.", stats.hits),
            ("misses", "Adapter cache misses (loads).", stats.misses),
            ("evictions", "Adapters unloaded to stay within budget.", stats.evictions),
        ):
            yield CounterMetricFamily(f"grft_adapter_cache_{name}", doc, value=value)
        entries = self.cache.entries()
        yield GaugeMetricFamily("grft_adapter_cache_adapters", "Adapters loaded.", value=len(entries))
        yield GaugeMetricFamily(
            "grft_adapter_cache_bytes", "Bytes of loaded adapters.", value=sum(e.nbytes for e in entries)
        )


class PredictMetricsMiddleware:
    """Counts and times the prediction routes (status included, errors too).

    Added when the app is assembled, before its lifespan has built the metrics: it finds them on the
    app's services, and passes requests through untouched while there are none.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope.get("method") == "POST":
            endpoint = next((n for n, p in _PREDICT_PATHS.items() if p.match(scope.get("path", ""))), None)
        services = getattr(scope["app"].state, "services", None) if endpoint is not None else None
        metrics: Metrics | None = getattr(services, "metrics", None)
        if endpoint is None or metrics is None:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI) -> None:
    """Count and time the prediction routes (``/metrics`` itself is a system route)."""
    app.add_middleware(PredictMetricsMiddleware)
