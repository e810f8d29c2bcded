"""Chat examples to token ids and loss labels: the model's chat template renders a conversation, and
only the assistant's tokens are labels.

The template is the tokenizer's own (``apply_chat_template``), so a model is trained on exactly the
layout it is served with. Which characters belong to the assistant is found by rendering prefixes of
the conversation: for assistant message ``i``, the text of ``messages[:i]`` with the generation prompt
ends where the reply starts, and the text of ``messages[:i+1]`` ends where it ends (its end-of-turn
marker included, so the model learns to stop). Tokens whose first character lies in such a span are
labels; every other label is ``-100`` (ignored by the loss). This needs a template that renders a
prefix of the conversation as a prefix of the text, which the common ones (ChatML, LLaMA 3, Gemma,
Qwen) do; one that does not is refused with a clear error rather than trained on wrong labels.

Prompt/completion pairs are the prompt's text followed by the completion's and the end-of-sequence
token; the completion and that token are the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grft_core.cancel import check_stop
from grft_core.data.chat import ChatData, ChatExample
from grft_core.errors import ConfigError, DatasetRejected

__all__ = ["IGNORE_INDEX", "TokenizedExample", "encode_chat_data", "encode_example"]

#: The label of a position the loss ignores (PyTorch's cross-entropy default).
IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    """One example as the model reads it.

    Attributes:
        input_ids: token ids, at most the sequence length.
        labels: the same length; the token id where the loss applies, ``IGNORE_INDEX`` elsewhere.
        truncated: whether tokens past the sequence length were cut.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_targets(self) -> int:
        """Tokens the loss is computed on (the first token is never predicted, so it never counts)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: Sequence[dict[str, Any]], generation_prompt: bool) -> str:
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)


def _assistant_spans(tokenizer: Any, example: ChatExample) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant replies to train on."""
    messages = example.messages
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not message["weight"]:
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise DatasetRejected(
                f"{example.where}: the model's chat template does not render the conversation up to "
                f"messages[{i}] as a prefix of the whole (cannot tell which tokens are the assistant's); "
                "start each conversation with a system or user message",
                param=example.where,
            )
        spans.append((len(before), len(upto)))
    return full, spans


def _labels_from_spans(
    text: str, spans: list[tuple[int, int]], tokenizer: Any, add_special_tokens: bool
) -> tuple[list[int], list[int]]:
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = [int(t) for t in encoded["input_ids"]]
    labels = [IGNORE_INDEX] * len(ids)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(lo <= start < hi for lo, hi in spans):
            labels[position] = ids[position]
    return ids, labels


def encode_example(example: ChatExample, tokenizer: Any, max_length: int) -> TokenizedExample:
    """Token ids and labels of one example, cut to ``max_length`` tokens.

    Args:
        example: a chat conversation or a prompt/completion pair.
        tokenizer: a fast transformers tokenizer (offsets are needed) with a chat template for chat data.
        max_length: the sequence length; tokens past it are dropped (the start of a conversation is kept).
    Returns:
        the ids and labels (``IGNORE_INDEX`` outside the assistant's replies or the completion).
    Raises:
        ConfigError: the tokenizer has no chat template (chat data) or no offsets.
        DatasetRejected: the template cannot be split into turns (see the module docstring).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("causal-LM training needs a fast tokenizer (character offsets)", param="tokenizer")
    if example.messages:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "the model's tokenizer has no chat template; use prompt/completion data", param="tokenizer"
            )
        text, spans = _assistant_spans(tokenizer, example)
        # The template writes any begin-of-sequence token itself.
        ids, labels = _labels_from_spans(text, spans, tokenizer, add_special_tokens=False)
    else:
        prompt, completion = example.prompt or "", example.completion or ""
        ids, labels = _labels_from_spans(
            prompt + completion, [(len(prompt), len(prompt) + len(completion))], tokenizer, True
        )
        eos = getattr(tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            ids.append(eos)
            labels.append(eos)
    truncated = len(ids) > max_length
    return TokenizedExample(ids[:max_length], labels[:max_length], truncated)


def encode_chat_data(
    data: ChatData, tokenizer: Any, max_length: int
) -> tuple[list[TokenizedExample], dict[str, int]]:
    """Encode every example, dropping those left with no target token after the cut.

    Args:
        data: checked examples (``grft_core.data.chat``).
        tokenizer: as for ``encode_example``.
        max_length: the sequence length.
    Returns:
        the kept examples, and counts: ``examples``, ``dropped`` (no target left), ``truncated``,
        ``tokens`` (all kept tokens) and ``target_tokens`` (tokens the loss reads).
    Raises:
        DatasetRejected: no example keeps a target token (the message says to raise the sequence
            length), or a template problem (see ``encode_example``).
        ConfigError: see ``encode_example``.
    """
    kept: list[TokenizedExample] = []
    dropped = truncated = 0
    for example in data.examples:
        check_stop()
        encoded = encode_example(example, tokenizer, max_length)
        truncated += encoded.truncated
        if encoded.num_targets == 0:
            dropped += 1
            continue
        kept.append(encoded)
    if not kept:
        raise DatasetRejected(
            f"{data.name}: no example has an assistant token within the first {max_length} tokens; "
            "raise max_length",
            param="max_length",
        )
    stats = {
        "examples": len(kept),
        "dropped": dropped,
        "truncated": truncated,
        "tokens": sum(len(e.input_ids) for e in kept),
        "target_tokens": sum(e.num_targets for e in kept),
    }
    return kept, stats
