"""Generation for the chat and completions routes: one ``GenerationEngine`` per causal-LM base model and
the language-model adapters loaded into them.

A base model loads from the registry (``ModelRegistry.load_causal_lm``) on its first request and stays
for the life of the process; its engine's thread runs every request of that base, whatever its adapter,
in shared decoding steps. Adapters load on first use (through the same private download folder as the
classifier adapters) and are unloaded least recently used first past the inference cache's byte budget
or adapter count, never while a request holds them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from grft_core import ModelRegistry, ModelSpec
from grft_core.serving.generation import GenerationEngine
from grft_core.serving.generation_adapters import GenerationAdapters

#: The ``kind`` of a causal-LM registry entry.
CAUSAL_LM = "causal_lm"
#: Requests waiting to join an engine's batch, per request the batch holds: past it, 429.
WAITING_PER_SLOT = 4


def is_causal_lm(spec: ModelSpec) -> bool:
    """Whether a registry entry is a language model (else a classifier backbone)."""
    return getattr(spec, "kind", "classifier") == CAUSAL_LM


class ChatService:
    """The generation engines of this process and their adapters.

    Args:
        registry: the base models.
        budget_bytes: loaded adapters' byte budget.
        max_adapters: the most adapters loaded (None: only the budget limits).
        max_batch: the most requests in one decoding step of an engine.
        device: where models run.
        on_unload: called with an adapter id when it is unloaded (its downloaded files go).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        budget_bytes: int,
        max_adapters: int | None,
        max_batch: int,
        device: torch.device,
        on_unload: Callable[[str], None] | None = None,
    ) -> None:
        self.registry, self.device, self.max_batch = registry, device, max_batch
        self._engines: dict[str, GenerationEngine] = {}
        self._lock = threading.Lock()
        self.adapters = GenerationAdapters(
            self.engine, budget_bytes=budget_bytes, max_adapters=max_adapters, on_unload=on_unload
        )

    def engine(self, base_model: str) -> GenerationEngine:
        """The engine of ``base_model``, loading the model on first use (once per process).

        Raises:
            ModelNotFound: unknown name.
            ConfigError: not a causal LM, or files that do not load.
        """
        if (engine := self._engines.get(base_model)) is not None:
            return engine
        with self._lock:
            if base_model not in self._engines:
                dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
                model, tokenizer, spec = self.registry.load_causal_lm(
                    base_model, device=self.device, dtype=dtype
                )
                self._engines[base_model] = GenerationEngine(
                    model,
                    tokenizer,
                    device=self.device,
                    dtype=dtype,
                    fingerprint=spec.fingerprint,
                    max_batch=self.max_batch,
                    max_waiting=self.max_batch * WAITING_PER_SLOT,
                    name=f"generation-{base_model}",
                )
            return self._engines[base_model]

    @contextmanager
    def held(
        self, base_model: str, adapter_id: str | None, fetch: Callable[[], Path] | None
    ) -> Iterator[GenerationEngine]:
        """The engine to run a request on, with its adapter (if any) loaded and held for the block."""
        if adapter_id is None or fetch is None:
            yield self.engine(base_model)
            return
        with self.adapters.leased(adapter_id, fetch) as (engine, _):
            yield engine

    def evict(self, adapter_id: str) -> None:
        """Forget an adapter (deleted)."""
        self.adapters.evict(adapter_id)

    def close(self) -> None:
        """Stop every engine's thread (unfinished requests end cancelled)."""
        for engine in list(self._engines.values()):
            engine.close()
