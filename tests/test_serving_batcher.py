"""The batcher's fairness: tenants take turns by cost, so one tenant's queue cannot hold back another's
request past the next batch; the in-flight admission of the prediction endpoints; cutting long texts."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from api.errors import QuotaExceeded
from api.inference.limits import Admission
from grft_core.serving import DynamicBatcher, text_prefix


class Recorder:
    """A ``run`` that records each batch's items and can hold the first batch until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: Sequence[Any], adapter_ids: Sequence[str | None]) -> list[torch.Tensor]:
        self.batches.append(list(items))
        self.started.set()
        assert self.release.wait(30), "the test never released the first batch"
        return [torch.zeros(1) for _ in items]


def _requests(tenant: str, count: int, size: int) -> list[list[str]]:
    return [[f"{tenant}{i}.{j}" for j in range(size)] for i in range(count)]


def _which(batches: list[list[Any]], item: str) -> int:
    return next(n for n, batch in enumerate(batches) if item in batch)


class TestFairness:
    def test_a_tenant_with_many_big_requests_does_not_hold_another_past_the_next_batch(self) -> None:
        run = Recorder(hold_first=True)
        batcher = DynamicBatcher(run, max_batch=4, max_wait_s=0.0)
        batcher.pause()
        big = [batcher.submit(r, [None] * 4, tenant="A") for r in _requests("A", 6, 4)]
        batcher.resume()
        assert run.started.wait(30)  # A's first batch is running; five more are queued
        small = batcher.submit(["B0.0"], [None], tenant="B")
        run.release.set()

        assert len(small.result(timeout=30)) == 1
        for future in big:
            assert len(future.result(timeout=30)) == 4
        batcher.close()
        assert run.batches[0] == [f"A0.{j}" for j in range(4)]
        assert _which(run.batches, "B0.0") == 1  # first-come-first-served would give 6
        a_order = [x for batch in run.batches for x in batch if x.startswith("A")]
        assert a_order == [x for r in _requests("A", 6, 4) for x in r]  # one tenant's order is kept

    def test_tenants_alternate_by_cost_not_by_request(self) -> None:
        run = Recorder()
        batcher = DynamicBatcher(run, max_batch=2, max_wait_s=0.0)
        batcher.pause()
        # A's requests each cost 2 (say, long texts), B's 1: per turn A sends half as many.
        futures = [batcher.submit([f"A{i}"], [None], tenant="A", cost=2.0) for i in range(4)]
        futures += [batcher.submit([f"B{i}"], [None], tenant="B", cost=1.0) for i in range(8)]
        batcher.resume()
        for future in futures:
            future.result(timeout=30)
        batcher.close()
        served = [x for batch in run.batches for x in batch]
        assert sorted(served) == sorted([f"A{i}" for i in range(4)] + [f"B{i}" for i in range(8)])
        # Until A's queue empties, B never gets more than two requests (one quantum each) per A request.
        prefix = served[: served.index("A3") + 1]
        a_cost = 2 * sum(x.startswith("A") for x in prefix)
        b_cost = sum(x.startswith("B") for x in prefix)
        assert abs(a_cost - b_cost) <= 2

    def test_a_batch_stops_at_its_cost_cap_and_a_larger_request_runs_alone(self) -> None:
        run = Recorder()
        batcher = DynamicBatcher(run, max_batch=64, max_wait_s=0.0, max_cost=4.0)
        batcher.pause()
        futures = [batcher.submit([f"A{i}"], [None], tenant="A", cost=1.5) for i in range(4)]
        futures.append(batcher.submit(["huge"], [None], tenant="A", cost=9.0))
        batcher.resume()
        for future in futures:
            future.result(timeout=30)
        batcher.close()
        assert run.batches == [["A0", "A1"], ["A2", "A3"], ["huge"]]

    def test_same_tenant_requests_gather_within_max_batch(self) -> None:
        run = Recorder()
        batcher = DynamicBatcher(run, max_batch=8, max_wait_s=0.0)
        batcher.pause()
        futures = [batcher.submit(r, [None] * 2, tenant="A") for r in _requests("A", 3, 2)]
        batcher.resume()
        for future in futures:
            future.result(timeout=30)
        batcher.close()
        assert run.batches == [[x for r in _requests("A", 3, 2) for x in r]]

    def test_close_runs_what_is_queued_then_refuses(self) -> None:
        run = Recorder()
        batcher = DynamicBatcher(run, max_batch=2, max_wait_s=10.0)
        batcher.pause()
        futures = [batcher.submit([f"{t}{i}"], [None], tenant=t) for t in "AB" for i in range(2)]
        batcher.close()
        assert all(len(f.result(timeout=30)) == 1 for f in futures)
        assert run.batches == [["A0", "B0"], ["A1", "B1"]]
        with pytest.raises(RuntimeError, match="closed"):
            batcher.submit(["x"], [None])

    def test_refuses_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="quantum"):
            DynamicBatcher(Recorder(), quantum=0)
        batcher = DynamicBatcher(Recorder())
        with pytest.raises(ValueError, match="cost"):
            batcher.submit(["x"], [None], cost=-1)
        batcher.close()


class TestAdmission:
    def test_caps_requests_and_cost_in_flight_per_tenant(self) -> None:
        admission = Admission()
        with admission.admitted("a", 3.0, max_cost=4.0, max_requests=2):
            with pytest.raises(QuotaExceeded) as over_cost:
                admission.admitted("a", 2.0, max_cost=4.0, max_requests=2).__enter__()
            assert over_cost.value.retry_after is not None
            assert over_cost.value.status_code == 429
            with admission.admitted("b", 4.0, max_cost=4.0, max_requests=2):  # another tenant: its own
                pass
            with admission.admitted("a", 1.0, max_cost=4.0, max_requests=2):
                assert admission.inflight("a") == (2, 4.0)
                with pytest.raises(QuotaExceeded, match="requests in progress"):
                    admission.admitted("a", 0.0, max_cost=4.0, max_requests=2).__enter__()
        assert admission.inflight("a") == (0, 0.0)

    def test_a_lone_request_over_the_cost_cap_is_admitted(self) -> None:
        admission = Admission()
        with admission.admitted("a", 100.0, max_cost=4.0, max_requests=2):
            assert admission.inflight("a") == (1, 100.0)
        with admission.admitted("a", 100.0, max_cost=0, max_requests=0):  # 0: no limit
            with admission.admitted("a", 100.0, max_cost=0, max_requests=0):
                pass


class TestTextPrefix:
    def test_a_long_text_is_cut_to_what_the_model_reads(self, registry) -> None:
        from grft_core.data.preprocess import make_preprocessor

        pre = make_preprocessor(registry.get("tiny-bert"), max_length=32)
        texts = [
            "goal team coach shares bank profit " * 2000,  # plain words
            "héllo, wörld! 1,234.5 (naïve) café " * 2000,  # accents and punctuation
            "x" * 5_000 + " tail" * 1000,  # an over-long word (one [UNK]), within the largest window
            "短文本" * 20_000,  # no whitespace at all
            "short text",
        ]
        for text in texts:
            cut = text_prefix(pre.tokenizer, text, 32)
            assert text.startswith(cut)
            assert len(cut) <= 32 * 256
            torch.testing.assert_close(pre([cut])["input_ids"], pre([text])["input_ids"], rtol=0, atol=0)
        assert text_prefix(pre.tokenizer, "short text", 32) == "short text"
        # Past the largest window the cut is blind, but bounded: the tokenizer never sees megabytes.
        assert len(text_prefix(pre.tokenizer, "x" * 4_000_000 + " tail", 32)) == 32 * 256
