"""Liveness, readiness, Prometheus metrics and the base-model catalogue (``/v1/models``, OpenAI's shape).

``/healthz`` says the process serves requests; ``/readyz`` says its dependencies answer (the database
and the broker), so an orchestrator only routes traffic to replicas that can do the work. Readiness
reports which part failed by name and exception type, never the connection string or its credentials.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from api.deps import MetricsDep, SettingsDep, TenantDep
from api.errors import Unauthorized, error_responses
from domain.db import get_engine
from domain.queue import broker_folders
from domain.settings import Settings
from grft_core import ModelRegistry, ModelSpec
from grft_core.errors import ModelNotFound

router = APIRouter(tags=["system"])

PROBE_TIMEOUT_S = 2.0


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="Per dependency: 'ok' or 'error: <exception type>'.")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=64)
    object: Literal["model"] = "model"
    created: int = Field(ge=0, description="Unix seconds the weights were written into the store.")
    owned_by: Literal["grft"] = "grft"
    family: Literal["timm", "transformers"]
    modality: Literal["image", "text"]
    num_params: int = Field(ge=0)
    fingerprint: str = Field(max_length=128)


class ModelList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"] = "list"
    data: list[Model]


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


def _model(spec: ModelSpec) -> Model:
    weights = Path(spec.weights)
    return Model(
        id=spec.name,
        created=int(weights.stat().st_mtime) if weights.is_file() else 0,
        family=spec.family,
        modality=spec.modality,
        num_params=spec.num_params,
        fingerprint=spec.fingerprint,
    )


@router.get("/v1/models", response_model=ModelList, responses=error_responses(Unauthorized))
def list_models(_: TenantDep, settings: SettingsDep) -> ModelList:
    """The registry's base models (built-ins are written into the model store on first listing)."""
    return ModelList(data=[_model(spec) for spec in ModelRegistry(settings.model_dir).list()])


@router.get(
    "/v1/models/{model_id}", response_model=Model, responses=error_responses(Unauthorized, ModelNotFound)
)
def retrieve_model(
    model_id: Annotated[str, PathParam(min_length=1, max_length=64)], _: TenantDep, settings: SettingsDep
) -> Model:
    return _model(ModelRegistry(settings.model_dir).get(model_id))
