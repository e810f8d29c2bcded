"""Fine-tuning a causal language model on chat or prompt/completion JSONL into an adapter folder.

``grft_core.pipeline.train_to_folder`` hands a model of kind ``causal_lm`` to ``train_lm_to_folder``:
the files are checked (``grft_core.data.chat``), rendered with the model's chat template and labelled
on the assistant's tokens only (``grft_core.data.chat_tokens``), and trained through the same
``fit`` as classifiers (selection, methods, schedule, checkpoints, callbacks), the model seen through
``CausalLMForTraining`` so that the loss is the mean cross-entropy over assistant tokens and the
validation accuracy the mean next-token accuracy on them. The adapter holds the selected rows' deltas
and no head (``"task": "causal_lm"``), under the Hugging Face module names, so it applies to the plain
model the registry's ``load_causal_lm`` returns.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from grft_core.adapters.format import adapter_tensors, save_adapter
from grft_core.adapters.validation import CAUSAL_LM_TASK
from grft_core.cancel import ShouldStop, check_stop, stop_checks
from grft_core.data.chat import load_chat_train_val
from grft_core.data.chat_tokens import encode_chat_data
from grft_core.data.limits import DataLimits
from grft_core.errors import ConfigError
from grft_core.method.causal_lm import CausalLMCollator, CausalLMForTraining, enable_memory_savers
from grft_core.method.config import GRFTConfig
from grft_core.method.trainer import fit, resolve_device
from grft_core.models.classifier import load_transformers_config
from grft_core.models.registry import ModelRegistry, ModelSpec
from grft_core.models.tokenizers import load_tokenizer

__all__ = ["DEFAULT_LM_MAX_LENGTH", "lm_config", "sequence_length", "train_lm_to_folder", "validate_lm_files"]

#: Tokens per training sequence when ``max_length`` is not given: most chat turns fit, and a batch
#: of 8 such sequences of a 135M model trains in a few GB.
DEFAULT_LM_MAX_LENGTH = 512
METRICS_NAME = "metrics.json"


def lm_config(config: GRFTConfig) -> GRFTConfig:
    """The config a causal-LM run trains with.

    The selection pass scores rows by the gradients of the training loss itself (``selection_loss``
    ``ce``): the supervised contrastive loss needs class labels, which a language model has not.

    Raises:
        ConfigError: ``linear_probe``, which trains a head a causal LM does not have.
    """
    if config.method == "linear_probe":
        raise ConfigError("linear_probe trains a task head; causal language models have none", param="method")
    return config.replace(selection_loss="ce") if config.selection_loss != "ce" else config


def sequence_length(config: GRFTConfig, model_config: Any) -> int:
    """``config.max_length`` (default ``DEFAULT_LM_MAX_LENGTH``), capped at the model's positions
    (``model_config``: its transformers config)."""
    wanted = config.max_length or DEFAULT_LM_MAX_LENGTH
    limit = getattr(model_config, "max_position_embeddings", None)
    return min(wanted, int(limit)) if isinstance(limit, int) and limit > 0 else wanted


def _pad_id(tokenizer: Any) -> int:
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0


def validate_lm_files(
    spec: ModelSpec,
    train_uri: str,
    val_uri: str | None,
    config: GRFTConfig,
    *,
    limits: DataLimits | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Any]:
    """Check training files for a causal LM: every line, and the chat template's split into turns.

    Args:
        spec: the model's entry (kind ``causal_lm``).
        train_uri, val_uri: the files.
        config: the run's config (``max_length``, ``val_fraction``, ``seed``).
        limits, should_stop: see ``grft_core.data.chat.load_chat_dataset``.
    Returns:
        a summary: examples, format, tokens and target tokens of each part.
    Raises:
        DatasetRejected: a bad line (named), or no example with a target within ``max_length``.
    """
    with stop_checks(should_stop):
        train, val = load_chat_train_val(
            train_uri, val_uri, val_fraction=config.val_fraction, seed=config.seed, limits=limits
        )
        check_stop()
        folder = Path(spec.config_dir or Path(spec.weights).parent)
        tokenizer = load_tokenizer(folder)
        max_length = sequence_length(config, load_transformers_config(folder))
        _, train_stats = encode_chat_data(train, tokenizer, max_length)
        _, val_stats = encode_chat_data(val, tokenizer, max_length)
    return {
        "train_examples": train_stats["examples"],
        "validation_examples": val_stats["examples"],
        "format": train.format,
        "modality": "text",
        "max_length": max_length,
        "train_tokens": train_stats["tokens"],
        "train_target_tokens": train_stats["target_tokens"],
        "dropped_examples": train_stats["dropped"] + val_stats["dropped"],
    }


def train_lm_to_folder(
    spec: ModelSpec,
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
    """Train a causal LM on chat or prompt/completion files and write its adapter and metrics into ``out``.

    Args and raises as ``grft_core.pipeline.train_to_folder`` (whose causal-LM branch this is), and
    ``ConfigError`` for ``linear_probe``.

    Returns:
        the metrics, also in ``out/metrics.json``: the history (validation loss and mean token accuracy
        on assistant tokens per epoch), the best epoch, parameter counts, ``trained_tokens`` (tokens of
        the training sequences times epochs) and the data's token counts.
    """
    started = time.perf_counter()
    registry = registry or ModelRegistry()
    config = lm_config(config)
    with stop_checks(should_stop):
        train, val = load_chat_train_val(
            train_uri,
            val_uri,
            val_fraction=config.val_fraction,
            seed=config.seed,
            max_items=max_items,
            limits=limits,
        )
        check_stop()
        lm, tokenizer, spec = registry.load_causal_lm(spec.name)
        max_length = sequence_length(config, lm.config)
        train_items, train_stats = encode_chat_data(train, tokenizer, max_length)
        val_items, val_stats = encode_chat_data(val, tokenizer, max_length)
        collator = CausalLMCollator(_pad_id(tokenizer), max_length)
        model = CausalLMForTraining(lm)
        checkpointing = enable_memory_savers(model, resolve_device(config))
        base_state = (
            {k: v.clone() for k, v in model.state_dict().items()}
            if config.method in ("masked_dense", "gps")
            else None
        )
        result = fit(
            model,
            train_items,
            [0] * len(train_items),
            val_items,
            [0] * len(val_items),
            collator,
            config,
            callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
        )
    # "auto" values are resolved during fit: the adapter records what actually trained.
    trained = result.config or config
    tensors = adapter_tensors(
        model,
        trained.method,
        base_state,
        result.selection.indices if result.selection else None,
        trained.axis,
    )
    best = next((h for h in result.history if h.epoch == result.best_epoch), None)
    metrics: dict[str, Any] = {
        "history": [asdict(h) for h in result.history],
        "metric": "mean next-token accuracy on assistant tokens",
        "initial_val_accuracy": result.initial_val_accuracy,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "best_val_loss": best.val_loss if best is not None else float("nan"),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "trainable_share": result.trainable_params / max(result.total_params, 1),
        "adapter_tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "base_model": spec.name,
        "base_params": spec.num_params,
        "steps": result.steps,
        "trained_tokens": train_stats["tokens"] * trained.epochs,
        "data": {
            "format": train.format,
            "max_length": max_length,
            "train": train_stats,
            "validation": val_stats,
        },
        "gradient_checkpointing": checkpointing,
        "hyperparameters": {
            "n_epochs": trained.epochs,
            "batch_size": trained.batch_size,
            "learning_rate": trained.lr,
        },
        "wall_time_s": time.perf_counter() - started,
    }
    if result.autotune is not None:
        metrics["autotune"] = result.autotune
    if result.divergences:
        metrics["divergences"] = result.divergences
    doc: dict[str, Any] = {
        "method": trained.method,
        "task": CAUSAL_LM_TASK,
        "base_model": spec.name,
        "base_fingerprint": spec.fingerprint,
        "modality": "text",
        "axis": trained.axis,
        "k": trained.k,
        "l2_lambda": trained.l2_lambda,
        "labels": [],
        "preprocessing": {**collator.to_dict(), "format": train.format},
        "modules": _module_info(result),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
        "config": trained.to_dict(),
    }
    if result.autotune is not None:
        doc["autotune"] = result.autotune
    write_adapter_folder(out, tensors, doc, metrics, fp16)
    return metrics


def _module_info(result: Any) -> dict[str, Any]:
    if result.selection is None:
        return {}
    return {
        name: {"k": int(idx.numel()), "shape": list(result.selection.shapes.get(name, ()))}
        for name, idx in result.selection.indices.items()
    }


def write_adapter_folder(
    out: Path, tensors: dict[str, torch.Tensor], doc: dict[str, Any], metrics: dict[str, Any], fp16: bool
) -> None:
    """The adapter and ``metrics.json``, written to a temporary sibling and renamed into ``out``."""
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_adapter(tmp, tensors, doc, fp16=fp16)
        metrics["adapter_bytes"] = (tmp / "adapter_model.safetensors").stat().st_size
        (tmp / METRICS_NAME).write_text(json.dumps(metrics, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
