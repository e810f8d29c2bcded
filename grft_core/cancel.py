"""Cooperative cancel: long work asks ``should_stop()`` between units and stops with ``TrainingInterrupted``.

The library's long-running entry points (``pipeline.train_to_folder``, ``data.load_dataset`` and
``load_train_val``, ``data.fetch.fetch_https``, ``method.setup.compute_selection``) take an optional
``should_stop: Callable[[], bool]``. While one runs, the check reaches the inner loops (each file, record,
archive member and download chunk; each encoding chunk and batch of the selection pass, the evaluations and
the training) through a context variable, so the readers and the trainer do not each carry the argument.

``should_stop`` is called often (once per record when reading a table), so it must be cheap: a caller
that asks a database rate-limits itself. Nothing here starts threads; a context variable does not reach
threads started inside the scope, and no part of the library does work in one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from grft_core.errors import TrainingInterrupted

ShouldStop = Callable[[], bool]
"""Returns True once the work in progress should stop."""

_current: ContextVar[ShouldStop | None] = ContextVar("grft_should_stop", default=None)


@contextmanager
def stop_checks(should_stop: ShouldStop | None) -> Iterator[None]:
    """Make ``should_stop`` what :func:`check_stop` asks inside the ``with`` block.

    ``None`` keeps whatever an enclosing block installed; a second, different check nested inside one
    is asked after the outer one (either may stop the work).
    """
    outer = _current.get()
    if should_stop is None or should_stop is outer:
        yield
        return
    combined: ShouldStop = should_stop if outer is None else (lambda: outer() or should_stop())
    token = _current.set(combined)
    try:
        yield
    finally:
        _current.reset(token)


def check_stop() -> None:
    """Raise :class:`TrainingInterrupted` when the installed ``should_stop`` returns True (else nothing).

    Raises:
        TrainingInterrupted: the caller asked the work to stop.
    """
    should_stop = _current.get()
    if should_stop is not None and should_stop():
        raise TrainingInterrupted("stopped on request")
