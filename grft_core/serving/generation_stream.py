"""A generation request as its caller sees it: text deltas as they come, then the completion.

The engine's thread puts events on the handle's queue (text pieces, then one final ``Completion`` or an
error); the caller iterates the pieces (for streaming) or waits for ``result``. ``cancel`` asks the
engine to drop the request before its next step, e.g. when a streaming client goes away.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Completion:
    """A finished request.

    Attributes:
        text: the generated text (cut before a stop string, special tokens left out).
        token_ids: the tokens generated (including an end-of-sequence token that ended it).
        finish_reason: ``stop`` (end-of-sequence token or stop string) or ``length`` (``max_tokens``
            or the model's context reached).
        prompt_tokens: tokens of the prompt.
        completion_tokens: tokens generated.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class GenerationCancelled(Exception):
    """The request was cancelled (or the engine closed) before it finished."""


class GenerationHandle:
    """The caller's side of one request."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self._events: queue.Queue[str | Completion | BaseException] = queue.Queue()
        self._cancelled = threading.Event()
        self._result: Completion | None = None
        self._error: BaseException | None = None

    # -- engine side ------------------------------------------------------------------------------

    def put_text(self, piece: str) -> None:
        """Hand out a text delta (the engine's thread)."""
        if piece:
            self._events.put(piece)

    def finish(self, completion: Completion) -> None:
        """Hand out the completion (the engine's thread)."""
        self._events.put(completion)

    def fail(self, error: BaseException) -> None:
        """End the request with ``error`` (the engine's thread)."""
        self._events.put(error)

    @property
    def cancelled(self) -> bool:
        """Whether the caller asked to drop the request."""
        return self._cancelled.is_set()

    # -- caller side ------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Drop the request before the engine's next step (idempotent)."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they are generated; ends when the request finishes.

        Raises:
            Exception: whatever ended the request (``GenerationCancelled``, a forward error).
        """
        while self._result is None:
            if self._error is not None:
                raise self._error
            event = self._events.get()
            if isinstance(event, Completion):
                self._result = event
            elif isinstance(event, BaseException):
                self._error = event
            else:
                yield event

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the completion (consuming any deltas not yet read).

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            Exception: whatever ended the request.
        """
        while self._result is None:
            if self._error is not None:
                raise self._error
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"generation not finished within {timeout} s") from None
            if isinstance(event, Completion):
                self._result = event
            elif isinstance(event, BaseException):
                self._error = event
        return self._result
