"""Per-request sampling and text assembly for the generation engine.

* ``SamplingParams``: what a request asks for (max tokens, temperature, top-p, seed, stop strings),
  checked once with messages naming the field.
* ``Sampler``: picks the next token from one request's logits with the request's own ``torch.Generator``,
  so a seeded request draws the same tokens whatever else shares its batch. Temperature 0 is greedy.
* ``TextAssembler``: turns the growing token list into text deltas safe to stream. It holds back a tail
  that could still become a stop string (so a client never sees part of one) or that ends inside a
  multi-byte character, and cuts the text at the first stop string.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from grft_core.errors import ConfigError

#: The most stop strings a request may give, and their longest length (OpenAI allows 4).
MAX_STOP = 4
MAX_STOP_CHARS = 256
_REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples.

    Attributes:
        max_tokens: the most tokens to generate (>= 1).
        temperature: 0 for greedy decoding, else the softmax temperature (<= 2).
        top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``.
        seed: seeds the request's own generator (None: a random seed); the same seed, prompt and
            adapter give the same tokens.
        stop: strings that end the completion when generated (not included in the text).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(
                f"max_tokens must be a positive integer, not {self.max_tokens!r}", param="max_tokens"
            )
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"temperature must be in [0, 2], not {self.temperature}", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], not {self.top_p}", param="top_p")
        if len(self.stop) > MAX_STOP:
            raise ConfigError(f"stop: at most {MAX_STOP} strings, got {len(self.stop)}", param="stop")
        for s in self.stop:
            if not s or len(s) > MAX_STOP_CHARS:
                raise ConfigError(f"stop strings must have 1-{MAX_STOP_CHARS} characters", param="stop")


class Sampler:
    """The next-token choice of one request (its generator lives as long as the request)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator()
        self.generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))

    def __call__(self, logits: Tensor) -> int:
        """A token id drawn from ``logits`` (``(vocab,)``, float32, on the CPU)."""
        if self.params.temperature == 0.0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, stable=True)
            # Keep a token while the mass before it is under top_p: the first token always stays.
            before = sorted_probs.cumsum(0) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(before >= self.params.top_p, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


class TextAssembler:
    """Generated tokens to streamable text, cut at the first stop string.

    Args:
        tokenizer: a transformers tokenizer (``decode``).
        stop: the request's stop strings.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.token_ids: list[int] = []
        self.text = ""  # the text so far (decoded, cut at a stop when one was found)
        self.emitted = 0  # characters of ``text`` already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now safe to hand out (maybe empty).

        After a stop string appears, ``stopped`` is True and the returned text ends right before it.
        """
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith(_REPLACEMENT):  # a multi-byte character is not complete yet
            return ""
        self.text = text
        # Only where a new token could have completed one: a stop string ends in the new text.
        start = max(0, self.emitted - max((len(s) for s in self.stop), default=0))
        found = [p for s in self.stop if (p := text.find(s, start)) >= 0]
        if found:
            self.text = text[: min(found)]
            self.stopped = True
            return self._take(len(self.text))
        return self._take(len(text) - self._held_back(text))

    def flush(self) -> str:
        """The text still held back, when the completion ends: without a stop string, the whole decoded
        text (an unfinished multi-byte character included, as the tokenizer decodes it)."""
        if not self.stopped:
            self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece = self.text[self.emitted : end]
        self.emitted = end
        return piece

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of ``text`` that begins some stop string."""
        held = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:n]):
                    held = n
                    break
        return held
