"""``/v1/models``: list and retrieve the base models and the organization's fine-tuned models; delete a
fine-tuned model (its adapter). OpenAI's Model objects (``id``, ``object``, ``created``, ``owned_by``)
with our details beside them.

A fine-tuned model is named ``ft:<base>:<org>:<suffix>:<id>`` (``domain.jobs.model_ids``); its adapter
id (``adapter-…``) is an alias here as everywhere. Base models belong to the service (``owned_by:
"grft"``) and cannot be deleted; fine-tuned models belong to their organization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from api.adapters.service import delete_adapter
from api.deps import InferenceDep, SessionDep, SettingsDep, StoreDep, TenantDep
from api.errors import Forbidden, Unauthorized, error_responses
from api.files.schemas import unix
from domain.adapters.models import Adapter
from domain.auth.models import Tenant
from domain.jobs import model_ids
from domain.jobs.models import Job
from grft_core import ModelRegistry, ModelSpec
from grft_core.errors import ModelNotFound

router = APIRouter(tags=["models"])

ModelId = Annotated[str, PathParam(min_length=1, max_length=model_ids.MAX_MODEL_ID)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=model_ids.MAX_MODEL_ID)
    object: Literal["model"] = "model"
    created: int = Field(ge=0, description="Unix seconds: weights written into the store, or training done.")
    owned_by: str = Field(description="'grft' for base models, the organization's id for fine-tuned ones.")
    family: Literal["timm", "transformers"] | None = None
    modality: Literal["image", "text"] | None = None
    num_params: int | None = Field(default=None, ge=0, description="Of the base model.")
    fingerprint: str | None = Field(default=None, max_length=128, description="Of the base weights.")
    parent: str | None = Field(default=None, description="A fine-tuned model's base model.")
    adapter_id: str | None = Field(default=None, description="A fine-tuned model's adapter (an alias).")
    fine_tuning_job_id: str | None = None


class ModelList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"] = "list"
    data: list[Model]


class ModelDeleted(BaseModel):
    """OpenAI's answer to ``DELETE /v1/models/{id}``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["model"] = "model"
    deleted: Literal[True] = True


def _base(spec: ModelSpec) -> Model:
    weights = Path(spec.weights)
    return Model(
        id=spec.name,
        created=int(weights.stat().st_mtime) if weights.is_file() else 0,
        owned_by="grft",
        family=spec.family,
        modality=spec.modality,
        num_params=spec.num_params,
        fingerprint=spec.fingerprint,
    )


def _fine_tuned(
    model_id: str, tenant: Tenant, job: Job | None, adapter: Adapter, base: Model | None
) -> Model:
    """A fine-tuned model; what it is made of (family, modality, size) is its base's."""
    config = adapter.config or {}
    modality, fingerprint = config.get("modality"), config.get("base_fingerprint")
    return Model(
        id=model_id,
        created=unix(adapter.created_at),
        owned_by=tenant.id,
        family=base.family if base is not None else None,
        modality=modality if modality in ("image", "text") else (base.modality if base else None),
        num_params=base.num_params if base is not None else None,
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        parent=adapter.base_model,
        adapter_id=adapter.id,
        fine_tuning_job_id=job.id if job is not None else None,
    )


@router.get("/v1/models", response_model=ModelList, responses=error_responses(Unauthorized))
def list_models(session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> ModelList:
    """The registry's base models (built-ins are written into the model store on first listing), then
    the organization's fine-tuned models, newest first."""
    bases = [_base(spec) for spec in ModelRegistry(settings.model_dir).list()]
    by_name = {base.id: base for base in bases}
    tuned = [
        _fine_tuned(model_ids.fine_tuned_model_id(job), tenant, job, adapter, by_name.get(adapter.base_model))
        for job, adapter in model_ids.fine_tuned_models(session, tenant.id)
    ]
    return ModelList(data=bases + tuned)


@router.get(
    "/v1/models/{model_id}", response_model=Model, responses=error_responses(Unauthorized, ModelNotFound)
)
def retrieve_model(model_id: ModelId, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> Model:
    """A base model, or a fine-tuned model of the organization (by its ``ft:…`` or adapter id)."""
    if not model_ids.looks_fine_tuned(model_id):
        return _base(ModelRegistry(settings.model_dir).get(model_id))
    resolved = model_ids.resolve(session, tenant.id, model_id)
    if resolved is None or resolved.adapter is None:
        raise ModelNotFound(f"no model {model_id!r}", param="model")
    shown = model_ids.fine_tuned_model_id(resolved.job) if resolved.job is not None else resolved.adapter.id
    try:
        base: Model | None = _base(ModelRegistry(settings.model_dir).get(resolved.adapter.base_model))
    except ModelNotFound:  # the base was removed from the registry: the model is still listed
        base = None
    return _fine_tuned(shown, tenant, resolved.job, resolved.adapter, base)


@router.delete(
    "/v1/models/{model_id}",
    response_model=ModelDeleted,
    responses=error_responses(Unauthorized, Forbidden, ModelNotFound),
)
def delete_model(
    model_id: ModelId, session: SessionDep, tenant: TenantDep, store: StoreDep, inference: InferenceDep
) -> ModelDeleted:
    """Delete a fine-tuned model of the organization: its adapter (row and files). The job that made it
    stays, still naming it. Base models cannot be deleted (403); another organization's model is 404."""
    if not model_ids.looks_fine_tuned(model_id):
        raise Forbidden(
            f"{model_id!r} is not a fine-tuned model of yours; base models cannot be deleted", param="model"
        )
    resolved = model_ids.resolve(session, tenant.id, model_id)
    if resolved is None or resolved.adapter is None:
        raise ModelNotFound(f"no fine-tuned model {model_id!r}", param="model")
    adapter_id = resolved.adapter.id
    delete_adapter(session, store, tenant, adapter_id)
    session.commit()
    inference.evict(adapter_id)  # this replica's copy; every replica refuses it at the row lookup
    return ModelDeleted(id=model_id)
