"""A tiny causal LM with two GRFT adapters (rows and columns) and their merged references."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from torch import nn

from grft_core.adapters.format import Adapter
from grft_core.serving.generation import GenerationEngine
from tests.serving_lm.tiny import lm_adapter, tiny_llama, tiny_tokenizer


@dataclass
class TinyLM:
    tokenizer: Any
    base: nn.Module  # a pristine copy: the engine takes its own model over
    adapters: dict[str, Adapter]
    merged: dict[str, nn.Module]  # adapter id -> the base with that adapter merged in


@pytest.fixture(scope="session")
def tiny_lm() -> TinyLM:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    a, merged_a = lm_adapter(model, seed=1, axis="rows")
    b, merged_b = lm_adapter(model, seed=2, axis="columns")
    return TinyLM(tokenizer, model, {"A": a, "B": b}, {"A": merged_a, "B": merged_b})


@pytest.fixture
def engine(tiny_lm: TinyLM) -> Iterator[GenerationEngine]:
    eng = GenerationEngine(copy.deepcopy(tiny_lm.base), tiny_lm.tokenizer, max_batch=8)
    for adapter_id, adapter in tiny_lm.adapters.items():
        eng.add(adapter_id, adapter)
    yield eng
    eng.close()
