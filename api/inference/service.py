"""Hosted inference: one copy of each base model serves every adapter trained on it, in shared batches.

The library does the serving (``grft_core.serving``); this module wires it to the service:

* **Engines**: one ``ServingEngine`` per base model, loaded from the registry on first use and kept for
  the life of the process. Each engine runs batches whose items name different adapters.
* **Adapters**: an ``AdapterCache`` over all engines, within ``inference_cache_bytes``. An adapter's folder
  is downloaded from the artifact store into a folder private to this process on first use (whole or
  absent), read, checked against its base's fingerprint and given a slot; eviction removes the files.
* **Batching**: one ``DynamicBatcher`` per engine gathers concurrent requests, whatever their
  adapters, for up to ``inference_max_wait_ms`` into one forward pass, round robin over tenants by
  cost (``prepare`` cuts texts to what the model reads and prices each item in the caller's thread).

A request leases its adapters before submitting its items, so no adapter it needs can be evicted
between the lookup and the forward.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from api.adapters.service import artifact_key
from api.errors import NotFound
from api.inference.chat_service import ChatService
from domain.adapters.models import Adapter
from domain.artifacts import ArtifactStore
from domain.settings import Settings
from grft_core import ModelRegistry
from grft_core.errors import AdapterError
from grft_core.serving import (
    AdapterCache,
    BatchRecord,
    CacheEntry,
    DynamicBatcher,
    ServedAdapter,
    ServingEngine,
    prepare_items,
)

#: A prediction: the label and the top-5 ``(label, probability)`` pairs, best first.
Ranked = tuple[str, list[tuple[str, float]]]
RESULT_TIMEOUT_S = 300.0
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class AdapterRef:
    """What inference needs of an adapter row: its id, its folder's store key, its base model."""

    id: str
    key: str
    base_model: str

    @classmethod
    def from_row(cls, row: Adapter, store: ArtifactStore) -> AdapterRef:
        return cls(id=row.id, key=artifact_key(store, row), base_model=row.base_model)


class InferenceService:
    """Process-wide: the engines, the adapter cache, the batchers.

    Args:
        store: where adapter folders live.
        registry: the base models.
        cache_root: parent of this process's private adapter folder.
        budget_bytes: the adapter cache's byte budget.
        max_adapters: at most this many adapters loaded (None: only the byte budget limits).
        max_batch: the most items one forward pass gathers.
        max_wait_s: how long a request waits for others to share its forward pass.
        max_batch_cost: the most cost one forward pass gathers, in full-size items (None: max_batch).
        device: where models run (default: CUDA when present, else CPU).
        on_batch: called after every forward pass (metrics).
    """

    def __init__(
        self,
        store: ArtifactStore,
        registry: ModelRegistry,
        cache_root: Path,
        *,
        budget_bytes: int = 1 << 30,
        max_adapters: int | None = None,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        max_batch_cost: float | None = None,
        device: torch.device | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.max_batch, self.max_wait_s, self.on_batch = max_batch, max_wait_s, on_batch
        self.max_batch_cost = max_batch_cost
        cache_root.mkdir(parents=True, exist_ok=True)
        # Private to this process: replicas sharing a home folder never read each other's half-written
        # copies, and everything goes when the service does.
        self.cache_dir = Path(tempfile.mkdtemp(prefix="adapters-", dir=cache_root))
        weakref.finalize(self, shutil.rmtree, self.cache_dir, True)
        self.base_loads: Counter[str] = Counter()
        self._engines: dict[str, ServingEngine] = {}
        self._batchers: dict[str, DynamicBatcher] = {}
        self._engine_lock = threading.Lock()
        self.cache = AdapterCache(
            self.engine, budget_bytes=budget_bytes, max_adapters=max_adapters, on_unload=self._drop_files
        )
        # Causal LMs: their generation engines and adapters, within the same limits.
        self.chat = ChatService(
            registry,
            budget_bytes=budget_bytes,
            max_adapters=max_adapters,
            max_batch=max_batch,
            device=self.device,
            on_unload=self._drop_files,
        )

    # -- engines ----------------------------------------------------------------------------------

    def engine(self, base_model: str) -> ServingEngine:
        """The engine of ``base_model``, loading the base on first use (once per process)."""
        if (engine := self._engines.get(base_model)) is not None:
            return engine
        with self._engine_lock:
            if base_model not in self._engines:
                # num_labels=1: items always name an adapter, and every adapter brings its own head.
                model, spec = self.registry.load(base_model, num_labels=1)
                self.base_loads[base_model] += 1
                engine = ServingEngine(model, spec=spec, device=self.device, fingerprint=spec.fingerprint)
                self._batchers[base_model] = DynamicBatcher(
                    engine.probabilities,
                    max_batch=self.max_batch,
                    max_wait_s=self.max_wait_s,
                    max_cost=self.max_batch_cost,
                    on_batch=self.on_batch,
                    name=f"batcher-{base_model}",
                )
                self._engines[base_model] = engine
            return self._engines[base_model]

    def modality(self, base_model: str) -> str:
        """``image`` or ``text``: what the base model takes."""
        spec = self.engine(base_model).spec
        assert spec is not None
        return spec.modality

    def close(self) -> None:
        """Stop the batchers (their queued requests finish first)."""
        for batcher in list(self._batchers.values()):
            batcher.close()
        self.chat.close()

    # -- adapters ---------------------------------------------------------------------------------

    def fetcher(self, ref: AdapterRef) -> Callable[[], Path]:
        """Download ``ref``'s folder into this process's cache folder (whole or absent), on call."""

        def fetch() -> Path:
            if not _SAFE_ID.match(ref.id):
                raise AdapterError(f"adapter id {ref.id!r} is not a plain id", param="adapter_id")
            final = self.cache_dir / ref.id
            if final.is_dir():
                return final
            if not self.store.exists(ref.key):
                raise NotFound(f"the files of adapter {ref.id!r} are missing", param="adapter_id")
            partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache_dir))
            try:
                self.store.get_folder(ref.key, partial)
                os.replace(partial, final)  # a failed download never looks complete
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            return final

        return fetch

    def _drop_files(self, adapter_id: str) -> None:
        if _SAFE_ID.match(adapter_id):
            shutil.rmtree(self.cache_dir / adapter_id, ignore_errors=True)

    @contextmanager
    def leased(self, refs: Sequence[AdapterRef]) -> Iterator[dict[str, ServedAdapter]]:
        """Load (if needed) and hold every adapter of ``refs`` for one request."""
        unique = {ref.id: ref for ref in refs}
        with self.cache.leased([(ref.id, self.fetcher(ref)) for ref in unique.values()]) as served:
            yield served

    def pin(self, ref: AdapterRef) -> CacheEntry:
        """Load if needed and keep loaded until unpinned."""
        return self.cache.pin(ref.id, self.fetcher(ref))

    def unpin(self, ref: AdapterRef) -> CacheEntry | None:
        """Make evictable again; None when not loaded."""
        return self.cache.unpin(ref.id)

    def preload(self, ref: AdapterRef) -> CacheEntry:
        """Load now, so the first request does not pay for it."""
        return self.cache.preload(ref.id, self.fetcher(ref))

    def evict(self, adapter_id: str) -> None:
        """Forget an adapter (deleted)."""
        self.cache.evict(adapter_id)
        self.chat.evict(adapter_id)
        self._drop_files(adapter_id)

    def cached_ids(self) -> list[str]:
        """Loaded adapter ids, least recently used first."""
        return [e.id for e in self.cache.entries()]

    # -- predicting -------------------------------------------------------------------------------

    def prepare(self, items: Sequence[Any], refs: Sequence[AdapterRef]) -> tuple[list[Any], list[float]]:
        """Decoded items cut to what their models read (texts), and each item's cost in full-size items.

        Runs in the caller's thread (adapters leased), so a huge text is cut there, not in a batcher
        that other tenants' requests share.
        """
        out, costs = list(items), [1.0] * len(items)
        for base, positions in _by_base(refs).items():
            cut, priced = prepare_items(
                self.engine(base), [items[i] for i in positions], [refs[i].id for i in positions]
            )
            for i, item, cost in zip(positions, cut, priced, strict=True):
                out[i], costs[i] = item, cost
        return out, costs

    def probabilities(
        self,
        items: Sequence[Any],
        refs: Sequence[AdapterRef],
        *,
        tenant: str = "",
        costs: Sequence[float] | None = None,
    ) -> list[Tensor]:
        """Per decoded item, its class probabilities under its adapter (leased by the caller).

        Items of different base models go to their own engines; each engine's batcher may run them
        together with other requests' items, taking turns by ``tenant`` and ``costs`` (from ``prepare``;
        default one per item).
        """
        futures: list[tuple[list[int], Future[list[Tensor]]]] = []
        for base, positions in _by_base(refs).items():
            self.engine(base)
            batcher = self._batchers[base]
            cost = None if costs is None else sum(costs[i] for i in positions)
            submitted = batcher.submit(
                [items[i] for i in positions], [refs[i].id for i in positions], tenant=tenant, cost=cost
            )
            futures.append((positions, submitted))
        out: list[Tensor] = [torch.empty(0)] * len(items)
        for positions, future in futures:
            for i, probs in zip(positions, future.result(timeout=RESULT_TIMEOUT_S), strict=True):
                out[i] = probs
        return out

    def predict(
        self,
        items: Sequence[Any],
        refs: Sequence[AdapterRef],
        *,
        tenant: str = "",
        costs: Sequence[float] | None = None,
    ) -> list[Ranked]:
        """Per item: the label and the top-5 ``(label, probability)`` pairs of its adapter."""
        probs = self.probabilities(items, refs, tenant=tenant, costs=costs)
        for p, ref in zip(probs, refs, strict=True):
            # Finite files can still overflow (huge deltas): a NaN score is the adapter's fault, not a 500.
            if not bool(torch.isfinite(p).all()):
                raise AdapterError(f"adapter {ref.id!r} gives non-finite scores", param="adapter_id")
        return [
            ranked(p, self.cache.engine_for(ref.base_model).get(ref.id).labels)
            for p, ref in zip(probs, refs, strict=True)
        ]


def build_service(
    settings: Settings, store: ArtifactStore, on_batch: Callable[[BatchRecord], None] | None = None
) -> InferenceService:
    """The process's one ``InferenceService`` (built by the app's lifespan). Cheap: base models load
    on their first request."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    return InferenceService(
        store,
        ModelRegistry(settings.model_dir),
        settings.home / "cache",
        budget_bytes=settings.inference_cache_bytes,
        max_adapters=settings.inference_max_adapters,
        max_batch=settings.inference_max_batch,
        max_wait_s=settings.inference_max_wait_ms / 1000,
        max_batch_cost=settings.inference_max_batch_cost,
        on_batch=on_batch,
    )


def _by_base(refs: Sequence[AdapterRef]) -> dict[str, list[int]]:
    """Item positions per base model, in order."""
    by_base: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        by_base.setdefault(ref.base_model, []).append(i)
    return by_base


def ranked(probs: Tensor, labels: Sequence[str]) -> Ranked:
    """The best label and the top-5 ``(label, probability)`` pairs (ties: the lower index first)."""
    order = torch.sort(probs, descending=True, stable=True).indices[: min(5, len(labels))]
    top = [(labels[int(i)], min(max(float(probs[int(i)]), 0.0), 1.0)) for i in order]
    return top[0][0], top
