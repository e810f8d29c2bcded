"""Continuing a fine-tuned model or checkpoint: what "continue" means for GRFT.

A job whose ``model`` names a GRFT fine-tuned model or checkpoint (``Job.init_from``) trains the same
base model, starting where the parent ended:

* **the same rows**: the parent's selection is the job's (no selection pass; ``k`` and ``axis`` are
  the parent's);
* **the parent's deltas as initial values**: they are merged into the base weights the job starts
  from, and the job trains new deltas on top, on those rows. Its L2 term pulls toward the parent (the
  weights it started from), not the pre-trained base;
* **the parent's head** when the new data has the parent's classes (same names, same order); a new
  head otherwise;
* **one adapter at the end**, on the unchanged base: parent deltas plus new deltas, on the same rows,
  so it loads, serves and exports like any other (its config records ``init_from``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import nn

from domain.adapters.models import Adapter as AdapterRow
from domain.artifacts import ArtifactStore
from domain.jobs.checkpoint_adapters import checkpoint_adapter
from domain.jobs.models import Job, JobCheckpoint
from grft_core.adapters.format import CONFIG_NAME, Adapter, load_adapter, save_adapter
from grft_core.errors import ModelNotFound
from grft_core.method.model import HEAD, apply_grft, grft_layers
from grft_core.method.selection import Selection
from grft_core.models.registry import ModelRegistry, ModelSpec

_DELTAS = (".grft_delta", ".grft_bias")


def parent_key(
    session: Session, store: ArtifactStore, registry: ModelRegistry, tenant_id: str, init_from: dict[str, Any]
) -> str:
    """The store key of the adapter the job continues from (a checkpoint's is built if needed).

    Raises:
        ModelNotFound: it was deleted since the job was created (or its checkpoint was collected).
    """
    model = str(init_from.get("model"))
    gone = ModelNotFound(f"{model!r}, which this job continues from, no longer exists", param="model")
    if init_from.get("step") is None:
        stmt = select(AdapterRow).where(
            AdapterRow.tenant_id == tenant_id, AdapterRow.id == init_from.get("adapter_id")
        )
        row = session.scalars(stmt).first()
        if row is None:
            raise gone
        return store.key_of(row.uri) or f"adapters/{row.id}"
    job = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.id == init_from.get("job_id"))
    ).first()
    checkpoint = None
    if job is not None:
        stmt_ckpt = select(JobCheckpoint).where(
            JobCheckpoint.job_id == job.id, JobCheckpoint.step == init_from.get("step")
        )
        checkpoint = session.scalars(stmt_ckpt).first()
    if job is None or checkpoint is None:
        raise gone
    try:
        return checkpoint_adapter(session, store, registry, job, checkpoint)
    except Exception as exc:
        raise gone from exc


def seed_selection(parent: Adapter, checkpoints: Path) -> None:
    """Write the parent's rows as the run's selection (unless a resumed attempt already has one): the
    trainer then reuses it instead of running a selection pass."""
    folder = checkpoints / "selection"
    if (folder / "selection.json").exists():
        return
    modules = parent.config.get("modules", {})
    Selection(
        axis=parent.config.get("axis", "rows"),
        indices={m: parent.tensors[f"{m}.grft_indices"].long() for m in modules},
        scores={},
        shapes={m: tuple(info.get("shape", ())) for m, info in modules.items()},
        meta={"source": "continued from a fine-tuned model"},
    ).save(folder)


class ContinuingRegistry:
    """A model registry whose ``load`` gives the base with the parent's deltas merged in (and the
    parent's head when ``labels`` are the parent's), for ``grft_core.pipeline.train_to_folder``."""

    def __init__(self, inner: ModelRegistry, parent: Adapter, labels: list[str] | None) -> None:
        self.inner, self.parent, self.labels = inner, parent, labels

    def get(self, name: str) -> ModelSpec:
        return self.inner.get(name)

    def load(self, name: str, **kwargs: Any) -> tuple[nn.Module, ModelSpec]:
        model, spec = self.inner.load(name, **kwargs)
        merge_parent(model, self.parent, copy_head=self.labels == list(self.parent.config.get("labels", [])))
        return model, spec


def merge_parent(model: nn.Module, parent: Adapter, *, copy_head: bool) -> None:
    """Add the parent's deltas into ``model``'s base weights in place (and copy its head if asked);
    the model is left unwrapped and trainable, as a freshly loaded one."""
    t = parent.tensors
    modules = list(parent.config.get("modules", {}))
    indices = {m: t[f"{m}.grft_indices"].long() for m in modules}
    has_bias = any(f"{m}.grft_bias" in t for m in modules)
    layers = apply_grft(model, indices, parent.config.get("axis", "rows"), train_bias=has_bias)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.grft_delta.copy_(t[f"{name}.grft_delta"])
            if layer.grft_bias is not None and f"{name}.grft_bias" in t:
                layer.grft_bias.copy_(t[f"{name}.grft_bias"])
            layer.merge()
    for name, layer in grft_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.base_layer)
    head = getattr(model, HEAD)
    if copy_head:
        with torch.no_grad():
            for n, p in head.named_parameters():
                if f"{HEAD}.{n}" in t and t[f"{HEAD}.{n}"].shape == p.shape:
                    p.copy_(t[f"{HEAD}.{n}"])
    for p in model.parameters():
        p.requires_grad_(True)


def combine(out: Path, parent: Adapter, init_from: dict[str, Any]) -> None:
    """Rewrite the trained adapter in ``out`` onto the unchanged base: its deltas plus the parent's,
    on the same rows; the head as trained. Records ``init_from`` in its config."""
    trained = load_adapter(out)
    tensors = dict(trained.tensors)
    for name, value in parent.tensors.items():
        if not name.endswith(_DELTAS):
            continue
        if name in tensors:
            tensors[name] = tensors[name].float() + value.float()
        else:  # a bias the parent trained and this run did not
            tensors[name] = value.float()
    doc = json.loads((out / CONFIG_NAME).read_text())
    doc["init_from"] = {k: v for k, v in init_from.items() if k != "checkpoint_uri"}
    for name in ("format", "format_version", "dtype", "adapter_bytes"):
        doc.pop(name, None)
    metrics = out / "metrics.json"
    keep = metrics.read_bytes() if metrics.is_file() else None
    save_adapter(out, tensors, doc)
    if keep is not None:
        metrics.write_bytes(keep)
