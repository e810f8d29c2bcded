"""What an item costs a forward pass, and cutting a text to what the model reads before it is tokenised.

A text model reads at most ``max_length`` tokens, but a tokenizer given a 4 MB text tokenises all of it
before truncating (seconds of CPU in the batcher's thread, delaying every request batched behind it).
``text_prefix`` finds a prefix of the text, cut at whitespace, that tokenises to at least as many tokens
as the model keeps: for tokenizers that split words at whitespace (WordPiece, byte-level BPE,
SentencePiece), its first ``max_length`` tokens are the full text's, so the answer is unchanged. It tries
windows of ``8 × max_length`` characters, doubling, up to ``256 × max_length`` characters; a text whose
first tokens span more than that (megabytes of whitespace, a word longer than the window) is cut there.

``prepare_items`` applies that to a request's items in the caller's thread and returns each item's cost
in units of one full-size item of the model: a text's tokens after truncation over the model's token limit, an
image's pixels at its adapter's input size over the model's default input size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from grft_core.data.preprocess import ImagePreprocessor, TextPreprocessor
from grft_core.serving.engine import ServingEngine

#: First window, in characters per token kept (English averages 4-6 characters a token).
CHARS_PER_TOKEN = 8
#: Largest window, in characters per token kept: bounds a text's tokenisation cost whatever it holds.
MAX_CHARS_PER_TOKEN = 256
_LAST_SPACE = re.compile(r"\s\S*\Z")


def text_prefix(tokenizer: Any, text: str, max_length: int) -> str:
    """The shortest tried prefix of ``text`` whose tokens cover the ``max_length`` the model keeps.

    Args:
        tokenizer: a transformers tokenizer.
        text: the raw text.
        max_length: the truncation length in tokens (special tokens included).
    Returns:
        ``text`` itself when it is short, else a prefix cut just before a whitespace character.
    """
    keep = max(1, max_length - int(tokenizer.num_special_tokens_to_add()))
    window = max_length * CHARS_PER_TOKEN
    largest = max_length * MAX_CHARS_PER_TOKEN
    while window < len(text):
        space = _LAST_SPACE.search(text, window // 2, window + 1)
        prefix = text[: space.start()] if space is not None else text[:window]
        # One token more than kept: the last word of the prefix ends at the cut either way.
        if (space is not None and len(tokenizer.tokenize(prefix)) > keep) or window >= largest:
            return prefix
        window *= 2
    return text


def prepare_items(
    engine: ServingEngine, items: Sequence[Any], adapter_ids: Sequence[str | None]
) -> tuple[list[Any], list[float]]:
    """Items cut to what the model reads (texts), and each item's cost in full-size items.

    Args:
        engine: the engine that will run them (its adapters give each item's preprocessing).
        items: decoded items (strings or PIL images).
        adapter_ids: one per item, loaded in ``engine`` (or None for the base head).
    Returns:
        ``(items, costs)``, in order.
    Raises:
        KeyError: an adapter id that is not loaded.
        ValueError: the engine has no model spec.
    """
    base = engine.preprocessor((None, None))
    out: list[Any] = []
    costs: list[float] = []
    for item, adapter_id in zip(items, adapter_ids, strict=True):
        key = (None, None) if adapter_id is None else engine.get(adapter_id).preprocess_key
        pre = engine.preprocessor(key)
        if isinstance(item, str) and isinstance(pre, TextPreprocessor):
            item = text_prefix(pre.tokenizer, item, pre.max_length)
            specials = int(pre.tokenizer.num_special_tokens_to_add())
            tokens = min(len(pre.tokenizer.tokenize(item)) + specials, pre.max_length)
            limit = base.max_length if isinstance(base, TextPreprocessor) else pre.max_length
            costs.append(tokens / max(1, limit))
        elif isinstance(pre, ImagePreprocessor) and isinstance(base, ImagePreprocessor):
            _, height, width = pre.input_size
            _, base_h, base_w = base.input_size
            costs.append(height * width / (base_h * base_w))
        else:
            costs.append(1.0)
        out.append(item)
    return out, costs
