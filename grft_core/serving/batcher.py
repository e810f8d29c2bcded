"""Dynamic batching: concurrent requests, whatever their adapters, gathered into one forward pass.

Callers ``submit`` a request (items and one adapter id per item) and get a ``Future``. One thread per
batcher takes the first waiting request, then keeps taking requests until ``max_batch`` items are
gathered or ``max_wait_s`` has passed since the first arrived, runs them as one call of ``run`` and hands
each caller its own slice. If a gathered batch fails, each of its requests is run again alone, so one
bad request (an adapter unloaded meanwhile, an input the model rejects) fails only itself.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

Run = Callable[[Sequence[Any], Sequence[str | None]], list[Tensor]]


@dataclass
class _Request:
    items: Sequence[Any]
    adapter_ids: Sequence[str | None]
    future: Future[list[Tensor]] = field(default_factory=Future)


@dataclass
class BatchRecord:
    """One forward pass the batcher ran: how many requests and items, and how long it took."""

    requests: int
    items: int
    seconds: float


class DynamicBatcher:
    """Gathers concurrent requests into batches for ``run``.

    Args:
        run: computes per-item outputs for items and their adapter ids (e.g. ``ServingEngine.probabilities``).
        max_batch: the most items gathered into one call (a larger request runs alone, whole).
        max_wait_s: how long the first request of a batch waits for company.
        on_batch: called after every batch (metrics).
        name: the thread's name.
    """

    def __init__(
        self,
        run: Run,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        on_batch: Callable[[BatchRecord], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.run, self.max_batch, self.max_wait_s, self.on_batch = run, max_batch, max_wait_s, on_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[Any], adapter_ids: Sequence[str | None]) -> Future[list[Tensor]]:
        """Queue a request; its future gives one output per item, in order.

        Raises:
            RuntimeError: the batcher is closed.
            ValueError: ``items`` and ``adapter_ids`` differ in length.
        """
        if self._closed:
            raise RuntimeError("the batcher is closed")
        if len(items) != len(adapter_ids):
            raise ValueError(f"{len(items)} items but {len(adapter_ids)} adapter ids")
        request = _Request(items, adapter_ids)
        self._queue.put(request)
        return request.future

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop after the requests already queued."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            if size + len(nxt.items) > self.max_batch:
                self._queue.put(nxt)  # starts the next batch (behind whatever else queued meanwhile)
                break
            batch.append(nxt)
            size += len(nxt.items)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            self._execute(batch)

    def _execute(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        items = [x for r in live for x in r.items]
        ids = [a for r in live for a in r.adapter_ids]
        try:
            outputs = self.run(items, ids)
        except BaseException as exc:  # noqa: BLE001 - handed to the callers, never lost
            if len(live) == 1:
                live[0].future.set_exception(exc)
            else:
                for request in live:
                    try:
                        request.future.set_result(self.run(request.items, request.adapter_ids))
                    except BaseException as own:  # noqa: BLE001
                        request.future.set_exception(own)
        else:
            start = 0
            for request in live:
                request.future.set_result(outputs[start : start + len(request.items)])
                start += len(request.items)
        if self.on_batch is not None:
            self.on_batch(BatchRecord(len(live), len(items), time.perf_counter() - started))
