"""End-to-end operations on names and URIs: train a model on a dataset into an adapter folder,
evaluate an adapter, export it. The CLI and the service's worker are thin layers over these.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grft_core.adapters.format import (
    GRFT_KINDS,
    Adapter,
    adapter_tensors,
    apply_adapter,
    load_adapter,
)
from grft_core.adapters.peft import export_peft_lora
from grft_core.cancel import ShouldStop, check_stop, stop_checks
from grft_core.data.limits import DataLimits
from grft_core.data.loading import LabeledData, load_dataset, load_train_val
from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import AdapterError, DatasetRejected, FingerprintMismatch
from grft_core.lm_pipeline import train_lm_to_folder, write_adapter_folder
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.evaluation import evaluate
from grft_core.method.trainer import TrainResult, fit
from grft_core.models.causal import CAUSAL_LM
from grft_core.models.registry import ModelRegistry, ModelSpec


def train_to_folder(
    model_name: str,
    train_uri: str,
    out: Path,
    config: GRFTConfig,
    *,
    val_uri: str | None = None,
    registry: ModelRegistry | None = None,
    callbacks: Sequence[Any] = (),
    checkpoint_dir: Path | None = None,
    fp16: bool = False,
    max_items: int | None = None,
    limits: DataLimits | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Any]:
    """Load model and data, train, and write the adapter plus ``metrics.json`` into ``out``.

    Nothing appears in ``out`` until the run has finished: the adapter and metrics are written to a
    temporary sibling and renamed into place.

    Args:
        model_name: a registry name.
        train_uri: training data URI; ``val_uri`` optional (else a seeded stratified split).
        out: the adapter folder to create.
        config: the run's config.
        registry: defaults to the store in ``$GRFT_MODEL_DIR``.
        callbacks: progress receivers (see ``trainer.fit``).
        checkpoint_dir: checkpoints for resuming (default: none kept).
        fp16: store deltas in float16.
        max_items: cap the number of items read from each dataset.
        limits: resource bounds on reading the data (default ``DataLimits()``).
        should_stop: a cheap check asked throughout loading, encoding, selection and training (see
            ``grft_core.cancel``); once it returns True the run stops.
    Returns:
        the metrics document also written to ``metrics.json``.
    Raises:
        GrftError subclasses: unknown model, rejected dataset, bad config.
        TrainingInterrupted: ``should_stop`` returned True, or a callback stopped the run.
    """
    started = time.perf_counter()
    registry = registry or ModelRegistry()
    spec = registry.get(model_name)
    if spec.kind == CAUSAL_LM:
        # Chat or prompt/completion JSONL on a language model: grft_core.lm_pipeline.
        return train_lm_to_folder(
            spec,
            train_uri,
            out,
            config,
            val_uri=val_uri,
            registry=registry,
            callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
            fp16=fp16,
            max_items=max_items,
            limits=limits,
            should_stop=should_stop,
        )
    # Every phase asks should_stop: each file, record, archive member and download chunk while loading,
    # each encoding chunk, each batch of the selection pass, the evaluations and the training.
    with stop_checks(should_stop):
        train, val = load_train_val(
            train_uri,
            val_uri,
            val_fraction=config.val_fraction,
            seed=config.seed,
            max_items=max_items,
            limits=limits,
        )
        _check_modality(spec, train)
        check_stop()
        model, spec = registry.load(model_name, num_labels=len(train.classes), seed=config.seed)
        preprocessor = make_preprocessor(spec, image_size=config.image_size, max_length=config.max_length)
        base_state = (
            {k: v.clone() for k, v in model.state_dict().items()}
            if config.method in ("masked_dense", "gps")
            else None
        )
        # registry.load has just checked the stored weights against this fingerprint; hashing again is waste.
        fingerprint = spec.fingerprint
        result = fit(
            model,
            train.items,
            train.labels,
            val.items,
            val.labels,
            preprocessor,
            config,
            callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
        )
    tensors = adapter_tensors(
        model,
        config.method,
        base_state,
        result.selection.indices if result.selection else None,
        config.axis,
    )
    metrics = _metrics(result, spec, tensors, time.perf_counter() - started)
    # "auto" values are resolved during fit: the adapter records what actually trained.
    config = result.config or config
    metrics["hyperparameters"] = {
        "n_epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.lr,
    }
    if result.autotune is not None:
        metrics["autotune"] = result.autotune
    if result.divergences:
        metrics["divergences"] = result.divergences
    doc = {
        "method": config.method,
        "base_model": spec.name,
        "base_fingerprint": fingerprint,
        "modality": spec.modality,
        "axis": config.axis,
        "k": config.k,
        "l2_lambda": config.l2_lambda,
        "labels": train.classes,
        "preprocessing": preprocessor.to_dict(),
        "modules": _module_info(result),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
        "config": config.to_dict(),
    }
    if result.autotune is not None:
        doc["autotune"] = result.autotune
    write_adapter_folder(out, tensors, doc, metrics, fp16)
    return metrics


def _check_modality(spec: ModelSpec, data: LabeledData) -> None:
    if spec.modality != data.modality:
        raise DatasetRejected(
            f"model {spec.name!r} takes {spec.modality} inputs but the dataset holds {data.modality}",
            param="data",
        )


def _module_info(result: TrainResult) -> dict[str, Any]:
    if result.selection is None:
        return {}
    return {
        name: {"k": int(idx.numel()), "shape": list(result.selection.shapes.get(name, ()))}
        for name, idx in result.selection.indices.items()
    }


def _metrics(
    result: TrainResult, spec: ModelSpec, tensors: dict[str, torch.Tensor], wall: float
) -> dict[str, Any]:
    return {
        "history": [asdict(h) for h in result.history],
        "initial_val_accuracy": result.initial_val_accuracy,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "trainable_share": result.trainable_params / max(result.total_params, 1),
        "adapter_tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "base_model": spec.name,
        "base_params": spec.num_params,
        "steps": result.steps,
        "wall_time_s": wall,
    }


def load_adapted(
    adapter_dir: Path, registry: ModelRegistry | None = None, *, device: str = "cpu"
) -> tuple[nn.Module, Any, Adapter]:
    """Load an adapter folder onto a fresh copy of its base model.

    Returns:
        ``(model, preprocessor, adapter)``, the model in eval mode on ``device``.
    Raises:
        ModelNotFound, FingerprintMismatch, AdapterError.
    """
    registry = registry or ModelRegistry()
    adapter = load_adapter(adapter_dir)
    cfg = adapter.config
    train_cfg = cfg.get("config", {})
    model, spec = registry.load(
        cfg["base_model"], num_labels=len(cfg["labels"]), seed=int(train_cfg.get("seed", 0))
    )
    apply_adapter(model, adapter)
    preprocessor = make_preprocessor(
        spec, image_size=train_cfg.get("image_size"), max_length=train_cfg.get("max_length")
    )
    return model.to(device), preprocessor, adapter


def evaluate_adapter(
    adapter_dir: Path, data_uri: str, registry: ModelRegistry | None = None, *, max_items: int | None = None
) -> dict[str, Any]:
    """Accuracy and loss of base + adapter on a labelled dataset whose classes the adapter knows.

    Raises:
        DatasetRejected: the data holds labels the adapter was not trained on.
    """
    model, preprocessor, adapter = load_adapted(adapter_dir, registry)
    data = load_dataset(data_uri, max_items=max_items)
    labels: list[str] = adapter.config["labels"]
    unknown = sorted(set(data.classes) - set(labels))
    if unknown:
        raise DatasetRejected(f"labels not known to the adapter: {', '.join(unknown[:10])}", param="data")
    mapped = [labels.index(data.classes[y]) for y in data.labels]
    source = BatchSource(data.items, mapped, preprocessor, torch.device("cpu"))
    accuracy, loss = evaluate(model, source, 64)
    return {"accuracy": accuracy, "loss": loss, "items": len(data), "adapter": str(adapter_dir)}


def export_peft(adapter_dir: Path, out: Path, registry: ModelRegistry | None = None) -> Path:
    """Export an adapter folder as a PEFT LoRA folder for its base model.

    Raises:
        AdapterError: not a GRFT adapter; ModelNotFound: its base is not registered.
    """
    registry = registry or ModelRegistry()
    adapter = load_adapter(adapter_dir)
    cfg = adapter.config
    if adapter.method not in GRFT_KINDS:
        raise AdapterError(f"a {adapter.method} adapter cannot be exported as LoRA", param="method")
    model: nn.Module
    if registry.get(cfg["base_model"]).kind == CAUSAL_LM:
        # No head: the export loads onto the plain AutoModelForCausalLM.
        model, _, spec = registry.load_causal_lm(cfg["base_model"])
    else:
        model, spec = registry.load(cfg["base_model"], num_labels=len(cfg["labels"]), seed=0)
    if cfg.get("base_fingerprint") and spec.fingerprint != cfg["base_fingerprint"]:
        raise FingerprintMismatch(
            "the registered base weights differ from the adapter's", param="base_fingerprint"
        )
    return export_peft_lora(adapter, model, out, base_name=spec.name)
