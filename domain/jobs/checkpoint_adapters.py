"""An adapter made from a checkpoint's state, so that a checkpoint can be downloaded, served and
continued from like a fine-tuned model.

A GRFT checkpoint holds the trainable tensors (each wrapped module's ``grft_delta`` and ``grft_bias``,
the head) and, beside the step folders, the selection (the indices): together, everything an adapter
holds. The adapter is built without loading the base model's weights, written once into the store
beside the checkpoint (``jobs/<job>/checkpoints/step-…/adapter``) and reused; it goes when the
checkpoint goes (the worker prunes old steps, the garbage collector finished jobs).
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from sqlalchemy.orm import Session

from domain.artifacts import ArtifactStore, checkpoints_key
from domain.errors import BadRequest, NotFound
from domain.jobs.models import Job, JobCheckpoint
from domain.jobs.results import validation_summary
from grft_core.adapters.format import CONFIG_NAME, save_adapter
from grft_core.data.preprocess import make_preprocessor
from grft_core.method.checkpoint import PREFIX
from grft_core.method.selection import Selection
from grft_core.models.registry import ModelRegistry

ADAPTER = "adapter"
TRAINABLE = "trainable.safetensors"
HEAD = "task_head"
_DELTAS = (".grft_delta", ".grft_bias")


def step_key(job_id: str, step: int) -> str:
    """The store key of a job's checkpoint folder at ``step``."""
    return f"{checkpoints_key(job_id)}/{PREFIX}{step:08d}"


def adapter_key(job_id: str, step: int) -> str:
    """Where the adapter made from that checkpoint lives."""
    return f"{step_key(job_id, step)}/{ADAPTER}"


def labels_of(session: Session, job_id: str) -> list[str] | None:
    """The job's class names, as its file validation recorded them (None before validation)."""
    classes = validation_summary(session, job_id).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else None


def checkpoint_adapter(
    session: Session, store: ArtifactStore, registry: ModelRegistry, job: Job, checkpoint: JobCheckpoint
) -> str:
    """The store key of the adapter made from ``checkpoint`` (built and stored on first call).

    Raises:
        BadRequest: the job's method keeps no selection-and-deltas state (only GRFT checkpoints make
            adapters), or its classes are unknown.
        NotFound: the checkpoint's files are gone (pruned or collected).
    """
    key = adapter_key(job.id, checkpoint.step)
    if store.exists(f"{key}/{CONFIG_NAME}"):
        return key
    method = str((job.method or {}).get("method", "grft"))
    if method != "grft":
        raise BadRequest(
            f"only GRFT checkpoints can be used as models; job {job.id} trains with {method!r}",
            param="model",
        )
    if registry.get(job.model).kind != "classifier":
        raise BadRequest(
            f"checkpoints of language-model jobs are not made into adapters yet; use job {job.id}'s "
            "fine-tuned model once it succeeds",
            param="model",
        )
    labels = labels_of(session, job.id)
    if labels is None:
        raise BadRequest(f"job {job.id} has no validated classes yet", param="model")
    folder = store.key_of(checkpoint.uri) or step_key(job.id, checkpoint.step)
    root = posixpath.dirname(folder)
    if not store.exists(f"{folder}/{TRAINABLE}") or not store.exists(f"{root}/selection"):
        raise NotFound(
            f"the files of checkpoint step {checkpoint.step} of job {job.id} are no longer stored",
            param="model",
        )
    work = Path(tempfile.mkdtemp(prefix="grft-ckpt-adapter-"))
    try:
        with store.open(f"{folder}/{TRAINABLE}") as source, (work / TRAINABLE).open("wb") as out:
            shutil.copyfileobj(source, out)
        selection = Selection.load(store.get_folder(f"{root}/selection", work / "selection"))
        tensors = adapter_tensors(load_file(str(work / TRAINABLE)), selection)
        doc = _config(registry, job, checkpoint, selection, labels, tensors)
        save_adapter(work / ADAPTER, tensors, doc)
        store.put_folder(key, work / ADAPTER)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return key


def adapter_tensors(trainable: dict[str, torch.Tensor], selection: Selection) -> dict[str, torch.Tensor]:
    """The adapter layout of a GRFT checkpoint's trainable tensors: indices from the selection, the
    deltas and the head as trained."""
    out: dict[str, torch.Tensor] = {}
    for module, indices in selection.indices.items():
        out[f"{module}.grft_indices"] = indices.to(torch.int32).contiguous()
        for suffix in _DELTAS:
            if (name := f"{module}{suffix}") in trainable:
                out[name] = trainable[name].contiguous()
    out.update({name: t.contiguous() for name, t in trainable.items() if name.startswith(HEAD + ".")})
    return out


def _config(
    registry: ModelRegistry,
    job: Job,
    checkpoint: JobCheckpoint,
    selection: Selection,
    labels: list[str],
    tensors: dict[str, torch.Tensor],
) -> dict[str, Any]:
    config = dict(job.method or {})
    spec = registry.get(job.model)
    preprocessor = make_preprocessor(
        spec, image_size=config.get("image_size"), max_length=config.get("max_length")
    )
    trainable = sum(t.numel() for name, t in tensors.items() if not name.endswith(".grft_indices"))
    return {
        "method": "grft",
        "base_model": spec.name,
        "base_fingerprint": spec.fingerprint,
        "modality": spec.modality,
        "axis": selection.axis,
        "k": config.get("k"),
        "l2_lambda": config.get("l2_lambda"),
        "labels": labels,
        "preprocessing": preprocessor.to_dict(),
        "modules": {
            name: {"k": int(idx.numel()), "shape": list(selection.shapes.get(name, ()))}
            for name, idx in selection.indices.items()
        },
        "trainable_params": trainable,
        "metrics": dict(checkpoint.metrics or {}),
        "config": config,
        "checkpoint": {"job_id": job.id, "step": checkpoint.step},
    }
