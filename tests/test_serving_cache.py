"""The adapter cache (LRU in a byte budget, pins, leases, counters) and the dynamic batcher."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from grft_core.errors import AdapterError, FingerprintMismatch
from grft_core.serving import AdapterCache, BatchRecord, DynamicBatcher, ServingEngine
from tests.conftest import make_texts
from tests.serving_helpers import write_random_adapter


@pytest.fixture(scope="module")
def folders(registry, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        f"a{i}": write_random_adapter(root / f"a{i}", registry, "tiny-bert", seed=i + 1, k=2)
        for i in range(4)
    }


@pytest.fixture
def engine(registry) -> ServingEngine:
    model, spec = registry.load("tiny-bert", num_labels=1)
    return ServingEngine(model, spec=spec, device=torch.device("cpu"))


class Fetcher:
    """Counts how often each adapter's folder is fetched."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders, self.calls = folders, Counter[str]()

    def __call__(self, adapter_id: str):
        def fetch() -> Path:
            self.calls[adapter_id] += 1
            return self.folders[adapter_id]

        return fetch


def _cache(engine: ServingEngine, budget: int, **kwargs) -> AdapterCache:
    return AdapterCache(lambda base: engine, budget_bytes=budget, **kwargs)


def _one_size(engine: ServingEngine, folders) -> int:
    probe = _cache(engine, 10**9)
    size = probe.preload("a0", lambda: folders["a0"]).nbytes
    probe.evict("a0")
    return size


def test_miss_then_hits_and_one_fetch(engine, folders):
    fetch = Fetcher(folders)
    cache = _cache(engine, 10**9)
    for _ in range(3):
        served_engine, served = cache.acquire("a0", fetch("a0"))
        cache.release("a0")
    assert served_engine is engine
    assert served.id == "a0"
    assert "a0" in engine
    assert fetch.calls["a0"] == 1
    assert (cache.stats.misses, cache.stats.hits, cache.stats.evictions) == (1, 2, 0)
    assert cache.stats.load_seconds_total > 0


def test_budget_evicts_least_recently_used(engine, folders):
    size = _one_size(engine, folders)
    fetch = Fetcher(folders)
    cache = _cache(engine, budget=int(size * 2.5))
    cache.preload("a0", fetch("a0"))
    cache.preload("a1", fetch("a1"))
    cache.acquire("a0", fetch("a0"))  # a0 becomes the most recently used
    cache.release("a0")
    cache.preload("a2", fetch("a2"))
    assert [e.id for e in cache.entries()] == ["a0", "a2"]
    assert "a1" not in engine
    assert cache.stats.evictions == 1
    assert cache.loaded_bytes() <= cache.budget_bytes


def test_count_limit(engine, folders):
    cache = _cache(engine, 10**9, max_adapters=2)
    for name in ("a0", "a1", "a2"):
        cache.preload(name, lambda name=name: folders[name])
    assert [e.id for e in cache.entries()] == ["a1", "a2"]


def test_pinned_and_leased_adapters_stay(engine, folders):
    size = _one_size(engine, folders)
    cache = _cache(engine, budget=int(size * 1.5))
    fetch = Fetcher(folders)
    assert cache.pin("a0", fetch("a0")).pinned
    cache.acquire("a1", fetch("a1"))  # leased: over budget, but in use
    cache.preload("a2", fetch("a2"))  # nothing evictable but a2 itself
    assert {e.id for e in cache.entries()} == {"a0", "a1"}
    cache.release("a1")  # now a1 goes
    assert {e.id for e in cache.entries()} == {"a0"}
    unpinned = cache.unpin("a0")
    assert unpinned is not None
    assert not unpinned.pinned
    assert cache.unpin("missing") is None
    assert cache.evict("a0")
    assert not cache.evict("a0")
    assert engine.adapters() == []


def test_refused_adapters_leave_nothing(engine, folders, registry, tmp_path):
    cache = _cache(engine, budget=100)
    with pytest.raises(AdapterError, match="budget"):
        cache.preload("a0", lambda: folders["a0"])
    other = write_random_adapter(tmp_path / "vit", registry, "tiny-vit", seed=1)
    big = _cache(engine, 10**9)
    # The vit adapter names its own base: an engine_for that returns the BERT engine sees a stranger.
    with pytest.raises((FingerprintMismatch, AdapterError)):
        big.preload("v", lambda: other)
    assert cache.entries() == big.entries() == []
    assert engine.adapters() == []


def test_leased_context_releases_on_error(engine, folders):
    cache = _cache(engine, 10**9)
    seen: list[int] = []

    def fail_while_leased() -> None:
        with cache.leased([("a0", lambda: folders["a0"])]) as served:
            seen.append(cache.entries()[0].leases)
            raise RuntimeError(served["a0"].id)

    with pytest.raises(RuntimeError, match="a0"):
        fail_while_leased()
    assert seen == [1]
    assert cache.entries()[0].leases == 0


def test_batcher_gathers_concurrent_requests_into_one_forward(engine, folders):
    cache = _cache(engine, 10**9)
    for name in ("a0", "a1", "a2"):
        cache.preload(name, lambda name=name: folders[name])
    records: list[BatchRecord] = []
    batcher = DynamicBatcher(engine.probabilities, max_batch=64, max_wait_s=1.0, on_batch=records.append)
    texts = make_texts(6)[0]
    requests = [(texts[:2], ["a0", "a1"]), (texts[2:3], ["a2"]), (texts[3:6], ["a1", None, "a0"])]
    results: dict[int, list[torch.Tensor]] = {}
    barrier = threading.Barrier(len(requests))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = batcher.submit(*requests[i]).result(timeout=30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert [(r.requests, r.items) for r in records] == [(3, 6)]
    for i, (items, ids) in enumerate(requests):
        alone = engine.probabilities(items, ids)
        assert len(results[i]) == len(items)
        for got, want in zip(results[i], alone, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_batcher_isolates_a_failing_request_and_splits_by_size(engine, folders):
    cache = _cache(engine, 10**9)
    cache.preload("a0", lambda: folders["a0"])
    records: list[BatchRecord] = []
    batcher = DynamicBatcher(engine.probabilities, max_batch=3, max_wait_s=0.5, on_batch=records.append)
    texts = make_texts(4)[0]
    good = batcher.submit(texts[:2], ["a0", "a0"])
    bad = batcher.submit(texts[2:3], ["not-loaded"])
    big = batcher.submit(texts, ["a0"] * 4)  # over max_batch: runs alone, whole
    assert len(good.result(timeout=30)) == 2
    with pytest.raises(KeyError):
        bad.result(timeout=30)
    assert len(big.result(timeout=30)) == 4
    batcher.close()
    assert [r.items for r in records] == [3, 4]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(texts[:1], ["a0"])
