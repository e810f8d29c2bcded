"""``/v1/adapters``: list, retrieve, download (as stored or as PEFT LoRA), delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from api.adapters import schemas, service
from api.deps import InferenceDep, SessionDep, SettingsDep, StoreDep, TenantDep
from api.errors import BadRequest, NotFound, Unauthorized, error_responses
from domain.jobs.model_ids import MAX_MODEL_ID
from grft_core import ModelRegistry
from grft_core.errors import AdapterError, FingerprintMismatch, ModelNotFound

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

# An adapter id, or its fine-tuned model id (``ft:…``): an alias.
AdapterId = Annotated[str, Path(min_length=1, max_length=MAX_MODEL_ID)]


@router.get("", response_model=schemas.AdapterList, responses=error_responses(Unauthorized, NotFound))
def list_adapters(
    session: SessionDep,
    tenant: TenantDep,
    after: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=schemas.MAX_PAGE)] = 20,
) -> schemas.AdapterList:
    return service.list_adapters(session, tenant, after=after, limit=limit)


@router.get(
    "/{adapter_id}", response_model=schemas.Adapter, responses=error_responses(Unauthorized, NotFound)
)
def retrieve_adapter(adapter_id: AdapterId, session: SessionDep, tenant: TenantDep) -> schemas.Adapter:
    return service.to_schema(service.get_adapter(session, tenant, adapter_id))


@router.get(
    "/{adapter_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "A tar of the adapter's files."},
        **error_responses(
            Unauthorized, NotFound, BadRequest, AdapterError, FingerprintMismatch, ModelNotFound
        ),
    },
)
def adapter_content(
    adapter_id: AdapterId,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    format: Annotated[schemas.ContentFormat, Query()] = "grft",
) -> StreamingResponse:
    """``grft``: the adapter folder as trained. ``peft_lora``: its exact PEFT LoRA export.

    ``adapter_id`` may also be a fine-tuned model id (``ft:…``) or a checkpoint's
    (``ft:…:ckpt-step-N``, ``ftjob-…:ckpt-step-N``): the adapter made from that checkpoint's state."""
    registry = ModelRegistry(settings.model_dir)
    row = service.get_model_adapter(session, tenant, adapter_id, store, registry)
    chunks = service.content(store, row, format, registry)
    suffix = "" if format == "grft" else "-peft-lora"
    return StreamingResponse(
        chunks,
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{row.id}{suffix}.tar"'},
    )


@router.delete(
    "/{adapter_id}", response_model=schemas.AdapterDeleted, responses=error_responses(Unauthorized, NotFound)
)
def delete_adapter(
    adapter_id: AdapterId, session: SessionDep, tenant: TenantDep, store: StoreDep, inference: InferenceDep
) -> schemas.AdapterDeleted:
    service.delete_adapter(session, store, tenant, adapter_id)
    inference.evict(adapter_id)  # free this replica's copy now; every replica refuses it at the row lookup
    return schemas.AdapterDeleted(id=adapter_id)
