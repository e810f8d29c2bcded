"""Prometheus metrics on ``/metrics``: every HTTP route, jobs per state, queue depths, the process,
prediction requests, batch sizes and the adapter cache.

Each app gets its own ``CollectorRegistry`` (several apps in one process, as in tests, never collide).
HTTP metrics come from an ASGI middleware around every route, labelled by the route's template (never
the raw path, whose ids would make a series per object) and by status; prediction metrics from a
second one on the prediction routes; batch metrics from the inference service's batchers. Jobs per
state, queue depths and the adapter cache are read when Prometheus scrapes (``OpsCollector``,
``CacheCollector``). The ``Metrics`` object is one of the app's services, built by its lifespan.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain import telemetry
from domain.settings import Settings
from grft_core.serving import AdapterCache, BatchRecord

_PREDICT_PATHS = {
    "predictions": re.compile(r"^/v1/predictions$"),
    "adapter_predict": re.compile(r"^/v1/adapters/[^/]+/predict$"),
}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The route label of a request no route matched (scanners, typos): one series, not one per path.
UNMATCHED = "<unmatched>"


class Metrics:
    """The app's metrics and their registry; with ``settings``, jobs and queues are read at scrape."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "grft_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "grft_http_request_seconds",
            "HTTP request latency, to the end of the response body, by status class.",
            ["method", "route", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # resident memory, CPU seconds, open files
        if settings is not None:
            self.registry.register(OpsCollector(settings))
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


class OpsCollector(Collector):
    """Jobs per state (one grouped count) and broker queue depths, read at scrape time.

    A source that does not answer is reported by ``grft_scrape_source_up`` = 0 and its series are
    left out: the scrape itself still succeeds, so the other series keep flowing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "grft_scrape_source_up", "Whether a source read at scrape time answered.", labels=["source"]
        )
        try:
            counts = telemetry.job_counts(self.settings.database_url)
        except Exception:  # noqa: BLE001 - a database that does not answer is a 0 on the up gauge
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            jobs = GaugeMetricFamily("grft_jobs", "Jobs by state.", labels=["state"])
            for state, count in sorted(counts.items()):
                jobs.add_metric([state], count)
            yield jobs
        try:
            depths = telemetry.queue_depths(self.settings)
        except Exception:  # noqa: BLE001 - same for the broker
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            queue = GaugeMetricFamily(
                "grft_queue_depth", "Messages waiting on a Celery queue.", labels=["queue"]
            )
            for name, depth in depths.items():
                queue.add_metric([name], depth)
            yield queue
        yield up


def route_label(scope: Scope) -> str:
    """The template of the route that handled ``scope`` (``/v1/fine_tuning/jobs/{job_id}``)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status (errors included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = getattr(scope["app"].state, "services", None) if scope["type"] == "http" else None
        metrics: Metrics | None = getattr(services, "metrics", None)
        if metrics is None:
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
            method = scope.get("method", "")
            method = method if method in HTTP_METHODS else "other"
            route = route_label(scope)
            metrics.http_requests.labels(method, route, str(status)).inc()
            metrics.http_latency.labels(method, route, f"{status // 100}xx").observe(
                time.perf_counter() - started
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
    """Count and time every route, and the prediction routes on their own (``/metrics`` itself is a
    system route). Added last, the HTTP middleware sees the responses of the body limit and CORS too."""
    app.add_middleware(PredictMetricsMiddleware)
    app.add_middleware(HttpMetricsMiddleware)
