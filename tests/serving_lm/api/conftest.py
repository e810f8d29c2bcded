"""A tiny causal LM registered in a temporary model store, two GRFT adapters of it stored as a tenant's
adapters, and the service fixtures (real Postgres, the app) of ``tests.api``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from domain.settings import Settings
from grft_core.adapters.format import save_adapter
from grft_core.models.registry import ModelRegistry
from tests.api.conftest import (  # noqa: F401  (the service fixtures, shared)
    REDIS_URL,
    api_key,
    app,
    auth,
    client,
    connection,
    database_url,
    db,
    engine,
    other_auth,
    other_key,
)
from tests.api.fixtures import add  # noqa: F401
from tests.serving_lm.tiny import lm_adapter, tiny_llama, tiny_tokenizer

BASE = "tiny-lm"


@dataclass
class LMStore:
    store: Path
    adapters: dict[str, Path]  # name -> adapter folder
    merged: dict[str, nn.Module]  # name -> the base with that adapter merged (None: the base)
    tokenizer: object


@pytest.fixture(scope="session")
def lm_store(tmp_path_factory: pytest.TempPathFactory) -> LMStore:
    store = tmp_path_factory.mktemp("lm-store")
    source = tmp_path_factory.mktemp("tiny-lm-source")
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer).save_pretrained(str(source), safe_serialization=True)
    tokenizer.save_pretrained(str(source))
    registry = ModelRegistry(store)
    registry.add_causal_lm(BASE, source)
    model, tokenizer, spec = registry.load_causal_lm(BASE)
    folders, merged = {}, {}
    for name, seed, axis in (("A", 1, "rows"), ("B", 2, "columns")):
        adapter, merged[name] = lm_adapter(model, seed=seed, axis=axis, base=BASE)
        config = {**adapter.config, "base_fingerprint": spec.fingerprint}
        folder = save_adapter(tmp_path_factory.mktemp(f"adapter-{name}") / "adapter", adapter.tensors, config)
        (folder / "metrics.json").write_text(json.dumps({"trainable_params": 0}))
        folders[name] = folder
    return LMStore(store, folders, merged, tokenizer)


@pytest.fixture
def settings(
    database_url: str,  # noqa: F811  (the session database fixture)
    tmp_path: Path,
    lm_store: LMStore,
) -> Settings:
    return Settings(
        env="test",
        secret_key="test-secret",
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=REDIS_URL,
        artifact_url=(tmp_path / "artifacts").as_uri(),
        model_dir=lm_store.store,
    )


def hf_greedy(model: nn.Module, prompt: list[int], max_tokens: int) -> list[int]:
    """The plain transformers model's greedy tokens, run alone (stopping at its end-of-sequence)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(prompt) :]]
