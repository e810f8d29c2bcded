"""Adapters with random deltas, made without training, for serving tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.serving import random_grft_adapter
from grft_core.adapters.format import Adapter, save_adapter
from grft_core.models.registry import ModelRegistry


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
    return random_grft_adapter(
        model,
        base_name=spec.name,
        seed=seed,
        axis=axis,
        k=k,
        train_bias=train_bias,
        include_depthwise=include_depthwise,
        scale=scale,
        image_size=image_size,
        max_length=max_length,
    )


def write_random_adapter(folder: Path, registry: ModelRegistry, base: str, **kwargs: Any) -> Path:
    """``random_adapter`` saved as an adapter folder."""
    adapter = random_adapter(registry, base, **kwargs)
    return save_adapter(folder, adapter.tensors, adapter.config)
