"""Token ids and labels: the loss reads the assistant's tokens only (completion tokens for pairs), the
sequence is cut at max_length, and batches are padded and bucketed by length."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from grft_core.data.chat import ChatData, ChatExample, parse_chat_line
from grft_core.data.chat_tokens import IGNORE_INDEX, encode_chat_data, encode_example
from grft_core.errors import DatasetRejected
from grft_core.method.causal_lm import CausalLMCollator
from tests.lm.helpers import chat_lines, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


def chat(row: dict[str, Any]) -> ChatExample:
    return parse_chat_line(row, "t.jsonl", "line 1")[1]


def labelled_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


class TestAssistantMask:
    def test_only_assistant_replies_and_their_end_marker_are_labels(self, tokenizer: Any) -> None:
        example = chat(chat_lines(1)[0])
        encoded = encode_example(example, tokenizer, 512)

        text = tokenizer.decode(encoded.input_ids)
        assert text.startswith("<|im_start|>system\nrepeat<|im_end|>\n<|im_start|>user\nsay ")
        first, second = example.messages[2]["content"], example.messages[4]["content"]
        assert labelled_text(tokenizer, encoded.input_ids, encoded.labels) == (
            f"{first}<|im_end|>\n{second}<|im_end|>\n"
        )
        # Labelled tokens are the input tokens themselves (the shift happens in the collator).
        assert all(
            lab in (IGNORE_INDEX, tok) for tok, lab in zip(encoded.input_ids, encoded.labels, strict=True)
        )

    def test_weight_zero_reply_is_not_trained(self, tokenizer: Any) -> None:
        row = chat_lines(1)[0]
        row["messages"][2]["weight"] = 0
        encoded = encode_example(chat(row), tokenizer, 512)
        second = row["messages"][4]["content"]
        assert labelled_text(tokenizer, encoded.input_ids, encoded.labels) == f"{second}<|im_end|>\n"

    def test_prompt_completion_labels_the_completion_and_eos(self, tokenizer: Any) -> None:
        example = parse_chat_line({"prompt": "say red", "completion": " red red"}, "t", "line 1")[1]
        encoded = encode_example(example, tokenizer, 512)
        assert labelled_text(tokenizer, encoded.input_ids, encoded.labels) == " red red<|im_end|>"
        assert encoded.input_ids[-1] == tokenizer.eos_token_id

    def test_truncation_and_dropping(self, tokenizer: Any) -> None:
        data = ChatData("chat", "t.jsonl", [chat(row) for row in chat_lines(4)])
        full, _ = encode_chat_data(data, tokenizer, 512)
        cut, stats = encode_chat_data(data, tokenizer, 21)

        assert all(len(e.input_ids) <= 21 for e in cut)
        assert stats["truncated"] == 4
        assert stats["tokens"] == sum(len(e.input_ids) for e in cut)
        assert all(c.input_ids == f.input_ids[:21] for c, f in zip(cut, full, strict=True))
        # Cut before the first reply: nothing left to learn, so the examples are dropped.
        with pytest.raises(DatasetRejected, match="raise max_length") as caught:
            encode_chat_data(data, tokenizer, 12)
        assert caught.value.param == "max_length"

    def test_template_that_is_not_prefix_stable_is_refused(self, tokenizer: Any) -> None:
        odd = tiny_tokenizer()
        # Writes the number of messages first: a prefix of the conversation is not a prefix of its text.
        odd.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
        with pytest.raises(DatasetRejected, match="does not render the conversation up to messages"):
            encode_example(chat(chat_lines(1)[0]), odd, 512)


class TestCollator:
    def test_targets_are_the_next_tokens_of_labelled_positions(self, tokenizer: Any) -> None:
        data = ChatData("chat", "t.jsonl", [chat(row) for row in chat_lines(3)])
        items, stats = encode_chat_data(data, tokenizer, 512)
        batch = CausalLMCollator(tokenizer.pad_token_id, 512)(items)

        width = max(len(e.input_ids) for e in items)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, width)
        assert int(batch["target_mask"].sum()) == len(batch["labels"]) == stats["target_tokens"]
        rows, cols = batch["target_mask"].nonzero(as_tuple=True)
        assert torch.equal(batch["input_ids"][rows, cols + 1], batch["labels"])
        assert not bool((batch["target_mask"] & (batch["attention_mask"] == 0)).any())

    def test_bucketing_keeps_every_index_and_groups_lengths(self, tokenizer: Any) -> None:
        rows = chat_lines(200)
        for i, row in enumerate(rows):  # lengths spread over a wide range
            row["messages"][1]["content"] = "say " + "red " * (i % 40)
        items, _ = encode_chat_data(ChatData("chat", "t", [chat(r) for r in rows]), tokenizer, 512)
        collator = CausalLMCollator(0, 512)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))

        bucketed = collator.bucket(items, order, 8, seed=5)

        assert sorted(bucketed.tolist()) == list(range(len(items)))
        assert torch.equal(bucketed, collator.bucket(items, order, 8, seed=5))

        def padding(perm: torch.Tensor) -> int:
            lengths = [len(items[int(i)].input_ids) for i in perm]
            return sum(max(lengths[i : i + 8]) * len(lengths[i : i + 8]) - sum(lengths[i : i + 8])
                       for i in range(0, len(lengths), 8))  # fmt: skip

        assert padding(bucketed) * 4 < padding(order)
