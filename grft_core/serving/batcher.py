"""Dynamic batching: concurrent requests, whatever their adapters, gathered into one forward pass, fairly.

Callers ``submit`` a request (items, one adapter id per item, the tenant it is for and its cost) and get a
``Future``. One thread per batcher waits for the first request, then for up to ``max_wait_s`` (or until
``max_batch`` items are waiting) for company, forms a batch, runs it as one call of ``run`` and hands each
caller its own slice. If a gathered batch fails, each of its requests is run again alone, so one bad
request (an adapter unloaded meanwhile, an input the model rejects) fails only itself.

**Fairness.** Waiting requests sit in one queue per tenant, and batches are formed by deficit round robin
(Shreedhar and Varghese, 1995) over the tenants with requests waiting: on its turn a tenant earns
``quantum`` of cost and sends its oldest requests while their cost fits what it has earned; a tenant whose
next request costs more than it has earned keeps the credit and waits for its next turn. A batch closes
when it holds ``max_batch`` items or ``max_cost`` of cost, or when the tenant whose turn it is has earned
its next request but that request does not fit: its turn then goes on first in the next batch, so every
request is served in bounded time; otherwise a turn ends with its batch. A request bigger than a whole
batch runs alone, whole.

What this bounds: a tenant that queues many large requests takes one quantum per turn like every other
tenant, so another tenant's small request joins the next batch formed (behind at most the batch running
now), not the end of the queue. Costs are the caller's: the service counts a text by its tokens after
truncation and an image by its pixels at the model's input size, in units of one full-size item.
"""

from __future__ import annotations

import threading
import time
from collections import deque
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
    tenant: str
    cost: float
    arrived: float
    future: Future[list[Tensor]] = field(default_factory=Future)


@dataclass
class BatchRecord:
    """One forward pass the batcher ran: how many requests and items, and how long it took.

    ``cost`` is the sum of its requests' costs and ``tenants`` how many tenants they came from.
    """

    requests: int
    items: int
    seconds: float
    cost: float = 0.0
    tenants: int = 1


class DynamicBatcher:
    """Gathers concurrent requests into batches for ``run``, round robin over tenants.

    Args:
        run: computes per-item outputs for items and their adapter ids (e.g. ``ServingEngine.probabilities``).
        max_batch: the most items gathered into one call (a larger request runs alone, whole).
        max_wait_s: how long the first request of a batch waits for company.
        max_cost: the most cost gathered into one call (default: ``max_batch``, one per full-size item).
        quantum: the cost a tenant earns per turn (default: one full-size item).
        on_batch: called after every batch (metrics).
        name: the thread's name.
    Raises:
        ValueError: a bound below its minimum.
    """

    def __init__(
        self,
        run: Run,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        max_cost: float | None = None,
        quantum: float = 1.0,
        on_batch: Callable[[BatchRecord], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        if (max_cost is not None and max_cost <= 0) or quantum <= 0:
            raise ValueError(f"max_cost ({max_cost}) and quantum ({quantum}) must be > 0")
        self.run, self.max_batch, self.max_wait_s, self.on_batch = run, max_batch, max_wait_s, on_batch
        self.max_cost = float(max_batch) if max_cost is None else float(max_cost)
        self.quantum = float(quantum)
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Request]] = {}  # tenant -> its waiting requests, oldest first
        self._ring: deque[str] = deque()  # tenants with requests waiting; the first one's turn is now
        self._deficit: dict[str, float] = {}
        self._in_turn = False  # the first tenant of the ring has had its quantum for this turn
        self._carried = False  # ... and its next request, earned, did not fit the last batch
        self._waiting_items = 0
        self._closed = False
        self._paused = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(
        self,
        items: Sequence[Any],
        adapter_ids: Sequence[str | None],
        *,
        tenant: str = "",
        cost: float | None = None,
    ) -> Future[list[Tensor]]:
        """Queue a request; its future gives one output per item, in order.

        Args:
            items: the raw items.
            adapter_ids: one per item.
            tenant: whose request it is: tenants take turns (requests of one tenant keep their order).
            cost: the request's cost (default: one per item).
        Raises:
            RuntimeError: the batcher is closed.
            ValueError: ``items`` and ``adapter_ids`` differ in length, or a negative cost.
        """
        if len(items) != len(adapter_ids):
            raise ValueError(f"{len(items)} items but {len(adapter_ids)} adapter ids")
        cost = float(len(items)) if cost is None else float(cost)
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        request = _Request(items, adapter_ids, tenant, cost, time.monotonic())
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if tenant not in self._queues:
                self._queues[tenant] = deque()
                self._ring.append(tenant)
                self._deficit[tenant] = 0.0
            self._queues[tenant].append(request)
            self._waiting_items += len(items)
            self._cond.notify()
        return request.future

    def waiting(self) -> dict[str, int]:
        """Requests waiting (not yet in a batch), per tenant."""
        with self._cond:
            return {tenant: len(q) for tenant, q in self._queues.items()}

    def pause(self) -> None:
        """Form no new batch until ``resume`` (the batch running now finishes); for tests and draining."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Undo ``pause``."""
        with self._cond:
            self._paused = False
            self._cond.notify()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop after the requests already queued."""
        with self._cond:
            self._closed = True
            self._paused = False
            self._cond.notify()
        self._thread.join(timeout)

    # -- forming batches (callers hold self._cond) --------------------------------------------------

    def _take(self, tenant: str) -> _Request:
        queue = self._queues[tenant]
        request = queue.popleft()
        self._deficit[tenant] -= request.cost
        self._waiting_items -= len(request.items)
        if not queue:  # an idle tenant keeps no credit
            del self._queues[tenant], self._deficit[tenant]
            self._ring.popleft()
            self._in_turn = False
        return request

    def _end_turn(self) -> None:
        self._ring.rotate(-1)
        self._in_turn = False

    def _form(self) -> list[_Request]:
        """One batch by deficit round robin over the waiting tenants (see the module docstring)."""
        batch: list[_Request] = []
        items, cost = 0, 0.0
        if self._in_turn and not self._carried and self._ring:
            self._end_turn()  # a turn ends with its batch, unless its next request was owed a place
        self._carried = False
        while self._ring and items < self.max_batch and cost < self.max_cost:
            tenant = self._ring[0]
            if not self._in_turn:
                self._deficit[tenant] += self.quantum
                self._in_turn = True
            head = self._queues[tenant][0]
            if head.cost > self._deficit[tenant]:
                self._end_turn()
                continue
            fits = items + len(head.items) <= self.max_batch and cost + head.cost <= self.max_cost
            if not fits and batch:
                self._carried = True
                break  # its turn goes on in the next batch, first
            batch.append(self._take(tenant))
            items, cost = items + len(head.items), cost + head.cost
            if not fits:
                break  # bigger than a whole batch: alone
        return batch

    def _oldest(self) -> float:
        return min(q[0].arrived for q in self._queues.values())

    def _next_batch(self) -> list[_Request] | None:
        """Wait for requests and their company, then form a batch; None once closed and drained."""
        with self._cond:
            while True:
                if not self._queues:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                if self._paused:
                    self._cond.wait()
                    continue
                remaining = self._oldest() + self.max_wait_s - time.monotonic()
                if remaining > 0 and self._waiting_items < self.max_batch and not self._closed:
                    self._cond.wait(remaining)
                    continue
                return self._form()

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
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
            record = BatchRecord(
                len(live),
                len(items),
                time.perf_counter() - started,
                cost=sum(r.cost for r in live),
                tenants=len({r.tenant for r in live}),
            )
            self.on_batch(record)
