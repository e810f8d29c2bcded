"""Liveness, readiness and Prometheus metrics (the model catalogue, ``/v1/models``, is ``api.models``).

``/healthz`` says the process serves requests; ``/readyz`` says its dependencies answer (the database,
the broker and the artifact store, side by side under ``READY_DEADLINE_S``), so an orchestrator routes
traffic only to replicas that can do the work. Readiness reports which part failed by name and
exception type, never the connection string or its credentials.
"""

from __future__ import annotations

import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from api.deps import MetricsDep, SettingsDep
from domain.artifacts import TMP, ArtifactStore
from domain.db import get_engine
from domain.queue import broker_folders
from domain.settings import Settings

router = APIRouter(tags=["system"])

PROBE_TIMEOUT_S = 2.0
# How long /readyz waits for all its checks together: the sockets' own timeouts plus room for a first
# probe's imports on a busy machine. Orchestrators' probe timeouts should be longer than this.
READY_DEADLINE_S = 5.0
# The probes run here, in parallel, under one deadline. A dependency that hangs
# keeps at most this many threads busy: later probes queue behind them and time out, never pile up.
_probes = ThreadPoolExecutor(max_workers=6, thread_name_prefix="grft-readyz")


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


def _check_artifact_store(url: str) -> str:
    # A real round trip: write, read back and delete a small object under tmp/ (where a leftover
    # from a probe cut short is collected like any partial upload).
    try:
        store = ArtifactStore(url)
        path = store.path(f"{TMP}/ready-{uuid.uuid4().hex}")
        payload = b"grft-ready"
        store.fs.makedirs(store.path(TMP), exist_ok=True)
        try:
            store.fs.pipe_file(path, payload)
            if store.fs.cat_file(path) != payload:
                return "error: ContentMismatch"
        finally:
            if store.fs.exists(path):
                store.fs.rm(path)
    except Exception as exc:  # any failure means "not ready"; the type says which kind
        return f"error: {type(exc).__name__}"
    return "ok"


def run_checks(settings: Settings, timeout_s: float = READY_DEADLINE_S) -> dict[str, str]:
    """Every readiness check by name: "ok" or "error: <exception type>" (``TimeoutError`` when it took
    longer than ``timeout_s``)."""
    futures = {
        "database": _probes.submit(_check_database, settings.database_url),
        "broker": _probes.submit(_check_broker, settings),
        "artifact_store": _probes.submit(_check_artifact_store, settings.artifact_url),
    }
    wait(futures.values(), timeout=timeout_s)  # one deadline for all: they run side by side
    return {
        name: future.result() if future.done() else "error: TimeoutError" for name, future in futures.items()
    }


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency does not answer."}},
)
def readyz(settings: SettingsDep) -> JSONResponse:
    checks = run_checks(settings)
    ready = all(value == "ok" for value in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
