"""Liveness, readiness and Prometheus metrics (the model catalogue, ``/v1/models``, is ``api.models``).

``/healthz`` says the process serves requests; ``/readyz`` says its dependencies answer (the database
and the broker), so an orchestrator only routes traffic to replicas that can do the work. Readiness
reports which part failed by name and exception type, never the connection string or its credentials.
"""

from __future__ import annotations

import tempfile
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from api.deps import MetricsDep, SettingsDep
from domain.db import get_engine
from domain.queue import broker_folders
from domain.settings import Settings

router = APIRouter(tags=["system"])

PROBE_TIMEOUT_S = 2.0


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="Per dependency: 'ok' or 'error: <exception type>'.")


@router.get("/metrics", include_in_schema=False)
def metrics(registered: MetricsDep) -> Response:
    """The Prometheus text format (404 when ``GRFT_METRICS_ENABLED`` is off)."""
    return Response(generate_latest(registered.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health()


def _check_database(url: str) -> str:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the type says which kind
        return f"error: {type(exc).__name__}"
    return "ok"


def _check_broker(settings: Settings) -> str:
    url = settings.broker_url
    try:
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(
                url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
            )
            try:
                client.ping()
            finally:
                client.close()
        elif url.startswith("filesystem://"):
            # The serverless transport is a folder: ready when a message could be written into it.
            folder = broker_folders(settings)["messages"]
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".ready-"):
                pass
        else:
            from kombu.connection import Connection

            with Connection(url, connect_timeout=PROBE_TIMEOUT_S) as conn:  # type: ignore[no-untyped-call]
                conn.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure means "not ready"; the type says which kind
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency does not answer."}},
)
def readyz(settings: SettingsDep) -> JSONResponse:
    checks = {"database": _check_database(settings.database_url), "broker": _check_broker(settings)}
    ready = all(value == "ok" for value in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
