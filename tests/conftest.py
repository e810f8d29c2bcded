"""Shared fixtures: one model store per test session, and small seeded inputs for tiny models."""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _close_database_pools() -> Iterator[None]:
    # Pooled connections left open at exit are garbage-collected unclosed, which psycopg reports.
    yield
    from domain.db import dispose_engines

    dispose_engines()
    gc.collect()


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store shared by the whole session (built-ins are converted into it once)."""
    return tmp_path_factory.mktemp("model-store")


@pytest.fixture(scope="session")
def registry(model_store: Path) -> Any:
    from grft_core.models.registry import ModelRegistry

    return ModelRegistry(model_store)


@pytest.fixture(autouse=True)
def _model_dir_env(model_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Code that builds its own ModelRegistry() (the CLI, the pipeline) sees the session store.
    monkeypatch.setenv("GRFT_MODEL_DIR", str(model_store))


def make_images(
    n: int, num_classes: int, seed: int = 0, size: int = 16
) -> tuple[list[Image.Image], list[int]]:
    """Seeded RGB images whose class shows in their colour, so a model can learn them."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    items, labels = [], []
    for i in range(n):
        label = i % num_classes
        base = torch.rand(3, size, size, generator=g) * 0.5
        base[label % 3] += 0.5
        array = (base.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        items.append(Image.fromarray(array, "RGB"))
        labels.append(label)
    pairs = list(zip(items, labels, strict=True))
    rng.shuffle(pairs)
    return [p[0] for p in pairs], [p[1] for p in pairs]


WORDS = {
    0: ["goal", "match", "team", "league", "score", "coach"],
    1: ["market", "shares", "profit", "bank", "trade", "stocks"],
    2: ["film", "actor", "music", "award", "album", "stage"],
}


def make_texts(n: int, num_classes: int = 3, seed: int = 0) -> tuple[list[str], list[int]]:
    """Seeded short sentences drawn from per-class vocabularies."""
    rng = random.Random(seed)
    items, labels = [], []
    for i in range(n):
        label = i % num_classes
        words = [rng.choice(WORDS[label]) for _ in range(rng.randint(3, 8))]
        items.append(" ".join(words))
        labels.append(label)
    return items, labels
