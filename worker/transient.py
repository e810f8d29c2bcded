"""Database errors that pass: a dropped connection, a server restarting, a failover.

A brief database cut must not cost a job one of its attempts, so the worker's writes wait for the
database with a growing pause instead of failing the attempt. The wait is bounded by the lease: past
``lease_seconds`` without a heartbeat the job is no longer this worker's to keep (the reconciler
re-queues it), and the fenced writes that follow say so with ``LeaseLost``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from domain.db import session_scope

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = (OperationalError, DisconnectionError, InterfaceError)
# The first pause after a failure, and the longest: doubling from 0.2 s reaches 5 s in five tries.
FIRST_PAUSE_S = 0.2
MAX_PAUSE_S = 5.0


def is_transient(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from, says the database is out of reach."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TRANSIENT):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def retrying(call: Callable[[], T], *, budget_s: float, what: str) -> T:
    """``call()``, called again after a transient database error (pausing 0.2 s, 0.4 s, … up to 5 s)
    until ``budget_s`` seconds have passed since the first failure; then, or on any other error, raises.

    ``call`` must be one unit of work (its own ``session_scope``) that is safe to repeat.
    """
    deadline: float | None = None
    pause = FIRST_PAUSE_S
    while True:
        try:
            return call()
        except Exception as exc:
            now = time.monotonic()
            deadline = now + budget_s if deadline is None else deadline
            if not is_transient(exc) or now + pause > deadline:
                raise
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning("%s: the database is out of reach (%s); trying again in %.1f s", what, reason, pause)
        time.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE_S)


def wait_for_database(url: str, *, budget_s: float) -> None:
    """Return once ``url`` answers a query; raises its last transient error after ``budget_s``."""

    def ping() -> None:
        with session_scope(url) as session:
            session.execute(text("SELECT 1"))

    retrying(ping, budget_s=budget_s, what="waiting for the database")
