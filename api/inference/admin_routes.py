"""``/v1/inference/adapters``: which of this organization's adapters are loaded, and pin/unpin/preload."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.deps import InferenceDep, SessionDep, TenantDep
from api.errors import NotFound, Unauthorized, error_responses
from api.inference.routes import adapter_refs
from api.inference.service import AdapterRef
from domain.adapters.models import Adapter
from domain.jobs.model_ids import MAX_MODEL_ID
from grft_core.errors import AdapterError, FingerprintMismatch, ModelNotFound
from grft_core.serving import CacheEntry

router = APIRouter(prefix="/v1/inference/adapters", tags=["inference"])
# An adapter id, or a fine-tuned model or checkpoint id (``ft:…``), as on every inference route.
AdapterId = Annotated[str, Path(min_length=1, max_length=MAX_MODEL_ID)]


class LoadedAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["inference.adapter"] = "inference.adapter"
    base_model: str
    device: str
    bytes: int = Field(ge=0, description="Bytes its deltas and head take on the device.")
    pinned: bool
    in_use: int = Field(ge=0, description="Requests using it right now.")
    loaded_at: datetime
    last_used_at: datetime
    load_ms: float = Field(ge=0, description="How long fetching and loading it took.")


class LoadedAdapterList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"] = "list"
    data: list[LoadedAdapter]
    total_bytes: int = Field(ge=0, description="Bytes of every adapter loaded in this replica, all tenants.")
    budget_bytes: int = Field(ge=1)


def _schema(entry: CacheEntry, device: str) -> LoadedAdapter:
    return LoadedAdapter(
        id=entry.id,
        base_model=entry.base_model,
        device=device,
        bytes=entry.nbytes,
        pinned=entry.pinned,
        in_use=entry.leases,
        loaded_at=datetime.fromtimestamp(entry.loaded_at, UTC),
        last_used_at=datetime.fromtimestamp(entry.last_used, UTC),
        load_ms=entry.load_seconds * 1000,
    )


_ERRORS = error_responses(Unauthorized, NotFound, FingerprintMismatch, ModelNotFound) | {
    AdapterError.status_code: {"description": "an adapter that cannot be served"}
}


@router.get("", response_model=LoadedAdapterList, responses=error_responses(Unauthorized))
def loaded_adapters(session: SessionDep, tenant: TenantDep, inference: InferenceDep) -> LoadedAdapterList:
    """This organization's adapters loaded in this replica, least recently used first."""
    entries = inference.cache.entries()
    ids = [e.id for e in entries]
    own = set(session.scalars(select(Adapter.id).where(Adapter.tenant_id == tenant.id, Adapter.id.in_(ids))))
    device = str(inference.device)
    return LoadedAdapterList(
        data=[_schema(e, device) for e in entries if e.id in own],
        total_bytes=sum(e.nbytes for e in entries),
        budget_bytes=inference.cache.budget_bytes,
    )


def _ref(session: SessionDep, tenant: TenantDep, inference: InferenceDep, adapter_id: str) -> AdapterRef:
    return adapter_refs(session, tenant, inference.store, [adapter_id], ["adapter_id"], inference.registry)[0]


@router.post("/{adapter_id}/pin", response_model=LoadedAdapter, responses=_ERRORS)
def pin(
    adapter_id: AdapterId, session: SessionDep, tenant: TenantDep, inference: InferenceDep
) -> LoadedAdapter:
    """Load the adapter if needed and keep it loaded until unpinned."""
    entry = inference.pin(_ref(session, tenant, inference, adapter_id))
    return _schema(entry, str(inference.device))


@router.post("/{adapter_id}/unpin", response_model=LoadedAdapter, responses=_ERRORS)
def unpin(
    adapter_id: AdapterId, session: SessionDep, tenant: TenantDep, inference: InferenceDep
) -> LoadedAdapter:
    """Let the adapter be evicted again when the cache needs room."""
    entry = inference.unpin(_ref(session, tenant, inference, adapter_id))
    if entry is None:
        raise NotFound(f"adapter {adapter_id} is not loaded", param="adapter_id")
    return _schema(entry, str(inference.device))


@router.post("/{adapter_id}/preload", response_model=LoadedAdapter, responses=_ERRORS)
def preload(
    adapter_id: AdapterId, session: SessionDep, tenant: TenantDep, inference: InferenceDep
) -> LoadedAdapter:
    """Load the adapter now, so its first prediction does not wait for the load."""
    entry = inference.preload(_ref(session, tenant, inference, adapter_id))
    return _schema(entry, str(inference.device))
