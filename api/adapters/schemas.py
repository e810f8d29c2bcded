"""Adapter shapes on the wire: one object, a cursor page of them, the deletion receipt."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.pagination import CursorPage

#: ``grft`` is the adapter folder as trained; ``peft_lora`` its exact PEFT LoRA export.
ContentFormat = Literal["grft", "peft_lora"]

MAX_PAGE = 100


class Adapter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=64)
    object: Literal["adapter"] = "adapter"
    created_at: int = Field(ge=0, description="Unix seconds.")
    base_model: str = Field(max_length=128)
    method: str = Field(max_length=32)
    bytes: int = Field(ge=0)
    job_id: str | None = Field(default=None, max_length=64)
    trainable_params: int | None = Field(default=None, ge=0)
    labels: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)


class AdapterList(CursorPage[Adapter]):
    model_config = ConfigDict(extra="forbid")


class AdapterDeleted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=64)
    object: Literal["adapter.deleted"] = "adapter.deleted"
    deleted: Literal[True] = True
