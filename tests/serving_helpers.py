"""Adapters with random deltas, made without training, for serving tests and the serving benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from grft_core.adapter import Adapter, adapter_tensors, backbone_fingerprint, save_adapter
from grft_core.model import HEAD, apply_grft, eligible_modules
from grft_core.registry import ModelRegistry


def random_adapter(
    registry: ModelRegistry,
    base: str,
    *,
    seed: int,
    num_labels: int = 3,
    axis: str = "rows",
    k: int = 2,
    train_bias: bool = True,
    include_depthwise: bool = False,
    scale: float = 0.05,
    image_size: int | None = None,
    max_length: int | None = None,
) -> Adapter:
    """A GRFT adapter of ``base`` with seeded random indices, deltas, bias deltas and head."""
    model, spec = registry.load(base, num_labels=num_labels, seed=seed)
    fingerprint = backbone_fingerprint(model)
    g = torch.Generator().manual_seed(seed)
    modules = eligible_modules(model, include_depthwise=include_depthwise)
    indices = {}
    for name, module in modules.items():
        w = module.weight
        limit = w.shape[0] if axis == "rows" else w[0].numel()
        indices[name] = torch.randperm(limit, generator=g)[: min(k, limit)].sort().values
    layers = apply_grft(model, indices, axis, train_bias=train_bias)  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in layers.values():
            layer.grft_delta.copy_(torch.randn(layer.grft_delta.shape, generator=g) * scale)
            if layer.grft_bias is not None:
                layer.grft_bias.copy_(torch.randn(layer.grft_bias.shape, generator=g) * scale)
        head: nn.Linear = getattr(model, HEAD)
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.5)
        head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.5)
    config: dict[str, Any] = {
        "method": "grft",
        "base_model": spec.name,
        "base_fingerprint": fingerprint,
        "modality": spec.modality,
        "axis": axis,
        "k": k,
        "labels": [f"class-{seed}-{i}" for i in range(num_labels)],
        "modules": {name: {"k": int(idx.numel())} for name, idx in indices.items()},
        "config": {"image_size": image_size, "max_length": max_length},
        "format": "grft-adapter",
        "format_version": 1,
    }
    return Adapter(config=config, tensors=adapter_tensors(model, "grft"))


def write_random_adapter(folder: Path, registry: ModelRegistry, base: str, **kwargs: Any) -> Path:
    """``random_adapter`` saved as an adapter folder."""
    adapter = random_adapter(registry, base, **kwargs)
    return save_adapter(folder, adapter.tensors, adapter.config)
