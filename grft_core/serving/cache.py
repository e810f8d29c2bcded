"""Which adapters are loaded: an LRU within a memory budget, with pinning, preloading and leases.

An adapter is loaded on first use: ``fetch`` brings its folder (from an artifact store, a disk, …),
``load_adapter`` reads the safetensors, and the engine of its base model (``engine_for``) checks the
base fingerprint and gives it a slot. When the loaded adapters' bytes pass the budget, the least
recently used are unloaded, except those pinned and those leased by a batch in flight: a lease is
what lets a request resolve its adapters first and run its forward later without an eviction in
between. Counters (hits, misses, evictions, load time) are kept for metrics.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from grft_core.adapters.format import load_adapter
from grft_core.adapters.validation import check_fits
from grft_core.errors import AdapterError
from grft_core.serving.engine import ServedAdapter, ServingEngine

Fetch = Callable[[], Path]


@dataclass(frozen=True)
class CacheEntry:
    """A loaded adapter as the cache sees it.

    Attributes:
        id: the adapter's id.
        base_model: the engine's base model name.
        nbytes: bytes its tensors take on the engine's device.
        pinned: never evicted while pinned.
        leases: batches using it right now (never evicted while > 0).
        loaded_at: ``time.time()`` of the load.
        last_used: ``time.time()`` of the last hit or load.
        load_seconds: how long fetching and loading took.
    """

    id: str
    base_model: str
    nbytes: int
    pinned: bool
    leases: int
    loaded_at: float
    last_used: float
    load_seconds: float


@dataclass
class CacheStats:
    """Counters since the cache was made."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    load_seconds_total: float = 0.0


class AdapterCache:
    """Loaded adapters of every engine, least recently used first.

    Args:
        engine_for: the engine serving a base model name (created on first use by the caller).
        budget_bytes: unload least recently used adapters while the loaded bytes exceed this.
        max_adapters: also keep at most this many loaded (None: no count limit).
        on_unload: called with an adapter's id whenever it leaves (evicted, or refused while loading),
            e.g. to delete its downloaded files.
    """

    def __init__(
        self,
        engine_for: Callable[[str], ServingEngine],
        *,
        budget_bytes: int,
        max_adapters: int | None = None,
        on_unload: Callable[[str], None] | None = None,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        self.engine_for = engine_for
        self.budget_bytes = budget_bytes
        self.max_adapters = max_adapters
        self.on_unload = on_unload
        self.stats = CacheStats()
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()  # guards _entries and stats; held briefly
        self._load_lock = threading.Lock()  # one load at a time: never the same adapter twice

    # -- use --------------------------------------------------------------------------------------

    def acquire(self, adapter_id: str, fetch: Fetch) -> tuple[ServingEngine, ServedAdapter]:
        """Lease an adapter, loading it if needed; pair every call with ``release``.

        Raises:
            AdapterError, FingerprintMismatch: the adapter cannot be served: its files are unreadable or
                malformed (truncated, non-finite values, indices out of range), it was trained on other
                weights, or it does not fit the budget (nothing is kept).
        """
        return self._get(adapter_id, fetch, lease=1)

    def release(self, adapter_id: str) -> None:
        """End one lease of ``acquire``."""
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is not None:
                self._entries[adapter_id] = replace(entry, leases=max(entry.leases - 1, 0))
        self._shrink()

    @contextmanager
    def leased(self, requests: Sequence[tuple[str, Fetch]]) -> Iterator[dict[str, ServedAdapter]]:
        """Lease several adapters for one batch: id → served adapter, all released on exit."""
        held: list[str] = []
        served: dict[str, ServedAdapter] = {}
        try:
            for adapter_id, fetch in requests:
                served[adapter_id] = self.acquire(adapter_id, fetch)[1]
                held.append(adapter_id)
            yield served
        finally:
            for adapter_id in held:
                self.release(adapter_id)

    def preload(self, adapter_id: str, fetch: Fetch) -> CacheEntry:
        """Load an adapter now (a no-op if loaded) and return its entry."""
        self._get(adapter_id, fetch, lease=1)  # leased until read back: a load never evicts itself
        with self._lock:
            entry = self._entries[adapter_id]
        self.release(adapter_id)
        return replace(entry, leases=entry.leases - 1)

    def pin(self, adapter_id: str, fetch: Fetch) -> CacheEntry:
        """Load if needed and keep loaded until ``unpin``."""
        self._get(adapter_id, fetch, lease=1)
        with self._lock:
            entry = self._entries[adapter_id]
            entry = self._entries[adapter_id] = replace(entry, pinned=True, leases=entry.leases - 1)
        return entry

    def unpin(self, adapter_id: str) -> CacheEntry | None:
        """Make an adapter evictable again; None if it is not loaded."""
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is not None:
                entry = self._entries[adapter_id] = replace(entry, pinned=False)
        self._shrink()
        return entry

    def evict(self, adapter_id: str) -> bool:
        """Unload an adapter now (deleted, replaced), pinned or not; False if it was not loaded."""
        with self._load_lock, self._lock:
            entry = self._entries.pop(adapter_id, None)
        if entry is None:
            return False
        self.engine_for(entry.base_model).remove(adapter_id)
        self._unloaded(adapter_id)
        return True

    def entries(self) -> list[CacheEntry]:
        """Loaded adapters, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def loaded_bytes(self) -> int:
        """Bytes of every loaded adapter."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    # -- internals --------------------------------------------------------------------------------

    def _hit(self, adapter_id: str, lease: int) -> tuple[ServingEngine, ServedAdapter] | None:
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is None:
                return None
            self._entries[adapter_id] = replace(entry, leases=entry.leases + lease, last_used=time.time())
            self._entries.move_to_end(adapter_id)
            self.stats.hits += 1
        engine = self.engine_for(entry.base_model)
        return engine, engine.get(adapter_id)

    def _get(self, adapter_id: str, fetch: Fetch, *, lease: int) -> tuple[ServingEngine, ServedAdapter]:
        if (hit := self._hit(adapter_id, lease)) is not None:
            return hit
        with self._load_lock:
            with self._lock:
                present = adapter_id in self._entries
            if present:  # loaded by another caller while this one waited
                hit = self._hit(adapter_id, lease)
                assert hit is not None
                return hit
            started = time.perf_counter()
            try:
                engine, served = self._load(adapter_id, fetch)
            except BaseException:
                self._unloaded(adapter_id)
                raise
            seconds = time.perf_counter() - started
            now = time.time()
            with self._lock:
                self._entries[adapter_id] = CacheEntry(
                    adapter_id, served.base_model, served.nbytes, False, lease, now, now, seconds
                )
                self.stats.misses += 1
                self.stats.load_seconds_total += seconds
        self._shrink()
        return engine, served

    def _load(self, adapter_id: str, fetch: Fetch) -> tuple[ServingEngine, ServedAdapter]:
        adapter = load_adapter(fetch())
        base = str(adapter.config.get("base_model", ""))
        if not base:
            raise AdapterError(f"adapter {adapter_id} names no base_model", param="base_model")
        engine = self.engine_for(base)
        # A corrupt file is refused here, never in a forward pass that other requests share.
        check_fits(adapter.config, adapter.tensors, engine.model)
        served = engine.add(adapter_id, adapter)
        if served.nbytes > self.budget_bytes:
            engine.remove(adapter_id)
            raise AdapterError(
                f"adapter {adapter_id} needs {served.nbytes:,} bytes, more than the whole cache budget "
                f"of {self.budget_bytes:,}",
                param="adapter_id",
            )
        return engine, served

    def _unloaded(self, adapter_id: str) -> None:
        if self.on_unload is not None:
            self.on_unload(adapter_id)

    def _shrink(self) -> None:
        """Unload least recently used, unpinned, unleased adapters until within budget and count."""
        with self._load_lock:
            victims: list[CacheEntry] = []
            with self._lock:
                total = sum(e.nbytes for e in self._entries.values())
                count = len(self._entries)
                for entry in list(self._entries.values()):
                    over_count = self.max_adapters is not None and count > self.max_adapters
                    if total <= self.budget_bytes and not over_count:
                        break
                    if entry.pinned or entry.leases > 0:
                        continue
                    del self._entries[entry.id]
                    victims.append(entry)
                    total -= entry.nbytes
                    count -= 1
                self.stats.evictions += len(victims)
            for entry in victims:
                self.engine_for(entry.base_model).remove(entry.id)
                self._unloaded(entry.id)
