"""Which language-model adapters are loaded: an LRU within a byte budget and a count, with leases.

The generation counterpart of ``grft_core.serving.cache``: an adapter is fetched, read and checked
against its base on first use and given a slot in that base's ``GenerationEngine``; when the loaded
adapters pass the budget, the least recently used one that no request holds is unloaded. A request
holds (leases) its adapter from before it is submitted until its last token, so a slot is never reused
under a running request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from grft_core.adapters.format import load_adapter
from grft_core.adapters.validation import check_fits
from grft_core.errors import AdapterError
from grft_core.serving.generation import GenerationEngine, ServedLMAdapter

Fetch = Callable[[], Path]


@dataclass
class _Entry:
    base_model: str
    nbytes: int
    leases: int


class GenerationAdapters:
    """Loaded adapters of every generation engine, least recently used first.

    Args:
        engine_for: the engine of a base model name.
        budget_bytes: unload unleased adapters, least recently used first, past this many bytes.
        max_adapters: and past this many adapters (None: no count limit).
        on_unload: called with an adapter id when it leaves (e.g. to delete its downloaded files).
    """

    def __init__(
        self,
        engine_for: Callable[[str], GenerationEngine],
        *,
        budget_bytes: int,
        max_adapters: int | None = None,
        on_unload: Callable[[str], None] | None = None,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        self.engine_for = engine_for
        self.budget_bytes, self.max_adapters, self.on_unload = budget_bytes, max_adapters, on_unload
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # one load or unload at a time; held briefly otherwise

    def acquire(self, adapter_id: str, fetch: Fetch) -> tuple[GenerationEngine, ServedLMAdapter]:
        """Lease an adapter, loading it first if needed; pair with ``release``.

        Raises:
            AdapterError, FingerprintMismatch: unreadable or malformed files, another base's weights,
                a classifier adapter, or one larger than the whole budget.
        """
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is None:
                entry = self._load(adapter_id, fetch)
                self._entries[adapter_id] = entry
            entry.leases += 1
            self._entries.move_to_end(adapter_id)
            engine = self.engine_for(entry.base_model)
            served = engine.get(adapter_id)
            self._shrink()
        return engine, served

    def release(self, adapter_id: str) -> None:
        """End one lease of ``acquire``."""
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is not None:
                entry.leases = max(entry.leases - 1, 0)
            self._shrink()

    @contextmanager
    def leased(self, adapter_id: str, fetch: Fetch) -> Iterator[tuple[GenerationEngine, ServedLMAdapter]]:
        """``acquire`` for the block, ``release`` after."""
        held = self.acquire(adapter_id, fetch)
        try:
            yield held
        finally:
            self.release(adapter_id)

    def evict(self, adapter_id: str) -> bool:
        """Unload an adapter now, leased or not (it was deleted); False if it was not loaded."""
        with self._lock:
            entry = self._entries.pop(adapter_id, None)
            if entry is None:
                return False
            self.engine_for(entry.base_model).remove(adapter_id)
        self._unloaded(adapter_id)
        return True

    def loaded(self) -> list[str]:
        """Loaded adapter ids, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _load(self, adapter_id: str, fetch: Fetch) -> _Entry:
        try:
            adapter = load_adapter(fetch())
            base = str(adapter.config.get("base_model", ""))
            engine = self.engine_for(base)
            # A malformed file is refused here, never inside a decoding step that others share.
            check_fits(adapter.config, adapter.tensors, engine.model)
            served = engine.add(adapter_id, adapter)
            if served.nbytes > self.budget_bytes:
                engine.remove(adapter_id)
                raise AdapterError(
                    f"adapter {adapter_id} needs {served.nbytes:,} bytes, more than the whole budget of "
                    f"{self.budget_bytes:,}",
                    param="model",
                )
        except BaseException:
            self._unloaded(adapter_id)
            raise
        return _Entry(base, served.nbytes, 0)

    def _shrink(self) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        for adapter_id, entry in list(self._entries.items()):
            over_count = self.max_adapters is not None and len(self._entries) > self.max_adapters
            if total <= self.budget_bytes and not over_count:
                break
            if entry.leases > 0:
                continue
            del self._entries[adapter_id]
            total -= entry.nbytes
            self.engine_for(entry.base_model).remove(adapter_id)
            self._unloaded(adapter_id)

    def _unloaded(self, adapter_id: str) -> None:
        if self.on_unload is not None:
            self.on_unload(adapter_id)
