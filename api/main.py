"""The FastAPI application: settings, error handlers and routers, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_handlers
from api.metrics import install_metrics
from domain.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Assemble the app for ``settings`` (default: from the environment)."""
    from api.adapters.routes import router as adapters_router
    from api.files.routes import router as files_router
    from api.inference.admin_routes import router as inference_admin_router
    from api.inference.routes import router as inference_router
    from api.jobs.routes import router as jobs_router
    from api.system.routes import router as system_router

    app = FastAPI(
        title="grft", version="0.1.0", docs_url="/docs", openapi_url="/openapi.json", lifespan=_lifespan
    )
    app.state.settings = settings or get_settings()
    install_handlers(app)
    routers = (
        system_router,
        files_router,
        jobs_router,
        adapters_router,
        inference_router,
        inference_admin_router,
    )
    for router in routers:
        app.include_router(router)
    if app.state.settings.metrics_enabled:
        install_metrics(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    from api.inference.service import close_service

    close_service(app.state)  # queued predictions finish; the batcher threads stop
