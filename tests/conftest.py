"""Shared fixtures: one model store per test session, and small seeded inputs for tiny models."""

from __future__ import annotations

import gc
import os
import random
import sys
from collections.abc import Callable, Iterator
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


def stack_names() -> set[str]:
    """The names of the functions on the caller's stack."""
    names, frame = set(), sys._getframe(1)
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back  # type: ignore[assignment]
    return names


def call_main(
    main: Callable[[list[str]], object], capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run a command-line ``main`` in-process and return (exit status, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def insert_tenant_job(settings: Any, tenant_prefix: str, **fields: Any) -> str:
    """A job (``fields``: its columns) of a new tenant named ``<tenant_prefix>-<job id>``, enqueued now and
    committed straight to ``settings.database_url``, as the API would have committed it."""
    from domain.auth.models import Tenant
    from domain.db import session_scope, utcnow
    from domain.ids import new_id
    from domain.jobs.models import Job

    job_id = new_id("ftjob")
    with session_scope(settings.database_url) as session:
        tenant = Tenant(id=new_id("tenant"), name=f"{tenant_prefix}-{job_id}")
        session.add(tenant)
        session.flush()
        session.add(Job(id=job_id, tenant_id=tenant.id, enqueued_at=utcnow(), **fields))
    return job_id
