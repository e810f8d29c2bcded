"""The FastAPI application: settings, error handlers, routers, and the lifespan that builds the
process-wide services (``api.deps.Services``) and closes them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from api.deps import Services
from api.errors import install_handlers
from api.inference.limits import RateLimiter
from api.inference.service import build_service
from api.limits import BodyLimitMiddleware
from api.metrics import CacheCollector, Metrics, install_metrics
from api.observability import install_request_context
from domain.artifacts import ArtifactStore
from domain.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Assemble the app for ``settings`` (default: from the environment)."""
    from api.adapters.routes import router as adapters_router
    from api.dashboard.routes import router as dashboard_router
    from api.files.routes import router as files_router
    from api.inference.admin_routes import router as inference_admin_router
    from api.inference.chat import router as chat_router
    from api.inference.routes import router as inference_router
    from api.jobs.routes import router as jobs_router
    from api.models.routes import router as models_router
    from api.system.routes import router as system_router
    from api.webhooks.routes import router as webhooks_router

    app = FastAPI(
        title="grft", version="0.1.0", docs_url="/docs", openapi_url="/openapi.json", lifespan=_lifespan
    )
    app.state.settings = settings or get_settings()
    install_handlers(app)
    app.add_middleware(BodyLimitMiddleware, settings=app.state.settings)  # before auth and parsing
    if app.state.settings.cors_origins:  # outside the body limit, so its 413s carry CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=app.state.settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                "X-Request-ID",
            ],
            expose_headers=["Content-Disposition", "Retry-After", "X-Request-ID"],
        )
    routers = (
        system_router,
        files_router,
        jobs_router,
        models_router,
        adapters_router,
        inference_router,
        chat_router,
        inference_admin_router,
        webhooks_router,
        dashboard_router,
    )
    for router in routers:
        app.include_router(router)
    if app.state.settings.metrics_enabled:
        install_metrics(app)
    install_request_context(app)  # outermost: every response carries X-Request-ID
    return app


def start_services(settings: Settings) -> Services:
    """Build what requests share: cheap, since base models load on their first prediction."""
    metrics = Metrics(settings) if settings.metrics_enabled else None
    store = ArtifactStore(settings.artifact_url)
    inference = build_service(settings, store, on_batch=metrics.on_batch if metrics else None)
    if metrics is not None:
        metrics.registry.register(CacheCollector(inference.cache))
    return Services(
        settings=settings, store=store, inference=inference, rate_limiter=RateLimiter(), metrics=metrics
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    if getattr(app.state, "services", None) is not None:
        # A second lifespan on a running app (some test transports start one) shares the first's.
        yield
        return
    services = start_services(app.state.settings)
    app.state.services = services
    try:
        yield
    finally:
        services.close()  # queued predictions finish; the batcher threads stop
        if getattr(app.state, "services", None) is services:
            app.state.services = None
