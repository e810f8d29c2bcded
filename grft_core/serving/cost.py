"""What an item costs a forward pass.

``prepare_items`` cuts a request's texts to what the model reads (``grft_core.data.preprocess.text_prefix``:
a 4 MB text would otherwise be tokenised whole in the batcher's thread, delaying every request batched
behind it) in the caller's thread, and returns each item's cost in units of one full-size item of the
model: a text's tokens after truncation over the model's token limit, an image's pixels at its adapter's
input size over the model's default input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grft_core.data.preprocess import ImagePreprocessor, TextPreprocessor, text_prefix
from grft_core.serving.engine import ServingEngine


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
