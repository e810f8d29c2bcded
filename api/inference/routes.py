"""Prediction endpoints: one adapter (``/v1/adapters/{id}/predict``) or many (``/v1/predictions``).

Both are synchronous routes: decoding and waiting for the batcher run in the thread pool, off the event
loop. Both go through the same engine and batchers, so a batched item is answered as the one-adapter
call would answer it, and concurrent callers share forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from sqlalchemy.orm import Session

from api.adapters.service import get_model_adapter
from api.deps import InferenceDep, RateLimiterDep, SessionDep, SettingsDep, TenantDep
from api.errors import BadRequest, NotFound, PayloadTooLarge, RateLimited, Unauthorized, error_responses
from api.inference.body import read_inputs, read_predictions, request_body_doc
from api.inference.limits import RateLimiter
from api.inference.schemas import (
    InvalidInput,
    LabelScore,
    Prediction,
    PredictionList,
    PredictionsRequest,
    RawInput,
    decode_for,
)
from api.inference.service import AdapterRef, InferenceService, Ranked
from domain.auth.models import Tenant
from domain.jobs.model_ids import MAX_MODEL_ID
from domain.settings import Settings
from grft_core import ModelRegistry
from grft_core.errors import AdapterError, FingerprintMismatch, ModelNotFound

router = APIRouter(tags=["inference"])

_ERRORS = error_responses(
    Unauthorized,
    NotFound,
    InvalidInput,
    PayloadTooLarge,
    BadRequest,
    FingerprintMismatch,
    ModelNotFound,
    RateLimited,
) | {AdapterError.status_code: {"description": "invalid input, or an adapter that cannot be served"}}


def rate_limited(tenant: TenantDep, settings: SettingsDep, limiter: RateLimiterDep) -> Tenant:
    """The caller's tenant, after taking one request from its rate limit."""
    limiter.check(tenant.id, settings.predict_rate_per_minute)
    return tenant


LimitedTenantDep = Annotated[Tenant, Depends(rate_limited)]


def _check_count(count: int, settings: Settings, param: str) -> None:
    if count > settings.predict_max_items:
        message = f"{param}: at most {settings.predict_max_items} per request, got {count}"
        raise InvalidInput(message, param=param)


def adapter_refs(
    session: Session,
    tenant: Tenant,
    store: Any,
    ids: Sequence[str],
    params: Sequence[str],
    registry: ModelRegistry,
) -> list[AdapterRef]:
    """Each id's adapter of this tenant, as a ref (a 404 names the first item whose adapter is unknown).

    An id is an adapter id, a fine-tuned model id (``ft:…``) or a checkpoint's (``…:ckpt-step-N``)."""
    rows: dict[str, AdapterRef] = {}
    for adapter_id, param in zip(ids, params, strict=True):
        if adapter_id not in rows:
            try:
                row = get_model_adapter(session, tenant, adapter_id, store, registry)
                rows[adapter_id] = AdapterRef.from_row(row, store)
            except NotFound as exc:
                raise NotFound(f"{param}: {exc.message}", param=param) from exc
    # End the read-only unit of work now, so no pooled database connection waits on the model.
    session.commit()
    return [rows[a] for a in ids]


def _answers(results: Sequence[Ranked]) -> PredictionList:
    return PredictionList(
        data=[
            Prediction(label=label, score=top[0][1], top_k=[LabelScore(label=lb, score=s) for lb, s in top])
            for label, top in results
        ]
    )


def _run(
    inference: InferenceService,
    raw: Sequence[RawInput],
    refs: Sequence[AdapterRef],
    settings: Settings,
    tenant: Tenant,
    limiter: RateLimiter,
) -> PredictionList:
    with inference.leased(refs) as served:
        items = [
            decode_for(
                r,
                inference.modality(ref.base_model),
                inference.engine(ref.base_model).preprocessor(served[ref.id].preprocess_key),
                settings,
                ref.id,
            )
            for r, ref in zip(raw, refs, strict=True)
        ]
        # Cut and priced in this thread; admitted within the tenant's in-flight allowance; then batched
        # in turns with other tenants' requests, by cost.
        items, costs = inference.prepare(items, refs)
        limits = settings.inference_tenant_max_cost, settings.inference_tenant_max_requests
        with limiter.admission.admitted(tenant.id, sum(costs), *limits):
            return _answers(inference.predict(items, refs, tenant=tenant.id, costs=costs))


@router.post(
    "/v1/adapters/{adapter_id}/predict",
    response_model=PredictionList,
    openapi_extra=request_body_doc(),
    responses=_ERRORS,
)
def predict(
    adapter_id: Annotated[str, Path(min_length=1, max_length=MAX_MODEL_ID)],
    # Authentication resolves before the body is read: an anonymous caller is refused without upload.
    tenant: LimitedTenantDep,
    session: SessionDep,
    settings: SettingsDep,
    inference: InferenceDep,
    limiter: RateLimiterDep,
    raw: Annotated[list[RawInput], Depends(read_inputs)],
) -> PredictionList:
    """One prediction per input, in input order: the label, its probability and the top 5."""
    ref = adapter_refs(session, tenant, inference.store, [adapter_id], ["adapter_id"], inference.registry)[0]
    _check_count(len(raw), settings, "inputs")
    return _run(inference, raw, [ref] * len(raw), settings, tenant, limiter)


@router.post("/v1/predictions", response_model=PredictionList, responses=_ERRORS)
def predictions(
    tenant: LimitedTenantDep,
    session: SessionDep,
    settings: SettingsDep,
    inference: InferenceDep,
    limiter: RateLimiterDep,
    body: Annotated[PredictionsRequest, Depends(read_predictions)],
) -> PredictionList:
    """Items that each name their adapter, answered in order; adapters of one base share forward passes.

    Each answer is the one ``POST /v1/adapters/{id}/predict`` gives for the same input.
    """
    _check_count(len(body.items), settings, "items")
    ids = [item.adapter for item in body.items]
    params = [f"items[{i}].adapter" for i in range(len(ids))]
    refs = adapter_refs(session, tenant, inference.store, ids, params, inference.registry)
    raw = [
        RawInput("image", item.input.image, f"items[{i}].input.image")
        if item.input.image is not None
        else RawInput("text", item.input.text or "", f"items[{i}].input.text")
        for i, item in enumerate(body.items)
    ]
    return _run(inference, raw, refs, settings, tenant, limiter)
