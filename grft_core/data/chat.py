"""Training files for causal language models: OpenAI's chat format and prompt/completion pairs, in JSONL.

One JSON object per line, in one of two formats (the first non-empty line decides; every line must
then use it):

* chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``, multi-turn;
  an assistant message may carry ``"weight": 0`` (OpenAI's field) to keep it out of the loss, and any
  message a ``"name"``;
* prompt/completion: ``{"prompt": "...", "completion": "..."}``.

Every line is checked (JSON, fields, roles, types, lengths) and a problem is a
:class:`~grft_core.errors.DatasetRejected` naming the file, the line, the field and the reason. What one
line may cost is bounded by :class:`~grft_core.data.limits.DataLimits` the way the other formats are:
bytes per line (``max_record_bytes``, refused before more of the line is read) and characters per
message (``max_text_chars``); a file holds at most :data:`MAX_CHAT_EXAMPLES` examples and a
conversation at most :data:`MAX_MESSAGES` messages.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grft_core.cancel import ShouldStop, check_stop, stop_checks
from grft_core.data import fetch
from grft_core.data.limits import DataLimits
from grft_core.errors import DatasetRejected

__all__ = [
    "MAX_CHAT_EXAMPLES",
    "MAX_MESSAGES",
    "ROLES",
    "ChatData",
    "ChatExample",
    "load_chat_dataset",
    "load_chat_train_val",
    "parse_chat_line",
    "read_chat_file",
]

ChatFormat = Literal["chat", "prompt_completion"]
ROLES = ("system", "user", "assistant")
#: One million lines: far past what fine-tuning a small model on one GPU gets through, yet bounded.
MAX_CHAT_EXAMPLES = 1_000_000
#: Messages in one conversation; a longer one would be truncated to the sequence length anyway.
MAX_MESSAGES = 1024
_MESSAGE_KEYS = frozenset({"role", "content", "weight", "name"})
_UNSUPPORTED = {
    "tool_calls": "tool calls are not supported",
    "function_call": "function calls are not supported",
    "tools": "tool definitions are not supported",
    "functions": "function definitions are not supported",
}


@dataclass
class ChatExample:
    """One training example.

    Attributes:
        messages: the conversation (chat format): dicts with ``role``, ``content`` and ``weight``
            (1 trains on the message, 0 does not; only assistant messages are ever trained on).
        prompt, completion: the pair (prompt/completion format); ``messages`` is then empty.
        where: where it came from (``"line 3"``).
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None
    completion: str | None = None
    where: str = ""


@dataclass
class ChatData:
    """The examples of one file, all in one format."""

    format: ChatFormat
    name: str
    examples: list[ChatExample]

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: list[int]) -> ChatData:
        """The examples at ``indices``, in that order."""
        return ChatData(self.format, self.name, [self.examples[i] for i in indices])


def _reject(name: str, where: str, message: str) -> DatasetRejected:
    return DatasetRejected(f"{name}: {where}: {message}", param=where)


def _text(value: Any, label: str, name: str, where: str, max_chars: int, *, empty_ok: bool) -> str:
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise _reject(name, where, f"{label} must be a string (got {kind})")
    if not empty_ok and not value.strip():
        raise _reject(name, where, f"{label} is empty")
    if len(value) > max_chars:
        raise _reject(
            name,
            where,
            f"{label} has {len(value):,} characters, over the limit of {max_chars:,} (max_text_chars)",
        )
    return value


def _message(raw: Any, i: int, name: str, where: str, max_chars: int) -> dict[str, Any]:
    label = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise _reject(name, where, f"{label} must be an object with role and content")
    for key, reason in _UNSUPPORTED.items():
        if key in raw:
            raise _reject(name, where, f"{label}.{key}: {reason}")
    unknown = sorted(set(raw) - _MESSAGE_KEYS)
    if unknown:
        raise _reject(name, where, f"{label} has unknown field {unknown[0]!r}")
    role = raw.get("role")
    if role not in ROLES:
        allowed = ", ".join(repr(r) for r in ROLES)
        raise _reject(name, where, f"{label}.role must be one of {allowed} (got {role!r})")
    # A system or user turn may be empty (it still frames the reply); a reply to learn from may not.
    content = _text(
        raw.get("content"), f"{label}.content", name, where, max_chars, empty_ok=role != "assistant"
    )
    weight = raw.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise _reject(name, where, f"{label}.weight must be 0 or 1 (got {weight!r})")
    if weight == 0 and role != "assistant":
        raise _reject(name, where, f"{label}.weight applies to assistant messages only")
    if "name" in raw and not isinstance(raw["name"], str):
        raise _reject(name, where, f"{label}.name must be a string")
    message = {"role": role, "content": content, "weight": int(weight)}
    if "name" in raw:
        message["name"] = raw["name"]
    return message


def parse_chat_line(
    row: Any, name: str, where: str, limits: DataLimits | None = None
) -> tuple[ChatFormat, ChatExample]:
    """Check one decoded JSONL line and turn it into an example.

    Args:
        row: the line's JSON value.
        name: the file's name, for messages.
        where: the line (``"line 3"``), for messages and ``param``.
        limits: ``max_text_chars`` bounds every message, prompt and completion.
    Returns:
        the line's format and its example.
    Raises:
        DatasetRejected: not an object, neither format, a bad field (named, with the reason).
    """
    max_chars = (limits or DataLimits()).max_text_chars
    if not isinstance(row, dict):
        raise _reject(name, where, "not a JSON object")
    for key, reason in _UNSUPPORTED.items():
        if key in row:
            raise _reject(name, where, f"{key}: {reason}")
    if "messages" in row:
        unknown = sorted(set(row) - {"messages"})
        if unknown:
            raise _reject(name, where, f"unknown field {unknown[0]!r} next to messages")
        raw = row["messages"]
        if not isinstance(raw, list) or not raw:
            raise _reject(name, where, "messages must be a non-empty list")
        if len(raw) > MAX_MESSAGES:
            raise _reject(name, where, f"messages has {len(raw)} entries, over the limit of {MAX_MESSAGES}")
        messages = [_message(m, i, name, where, max_chars) for i, m in enumerate(raw)]
        if not any(m["role"] == "assistant" and m["weight"] for m in messages):
            raise _reject(name, where, "messages has no assistant message to train on")
        return "chat", ChatExample(messages=messages, where=where)
    if "prompt" in row or "completion" in row:
        unknown = sorted(set(row) - {"prompt", "completion"})
        if unknown:
            raise _reject(name, where, f"unknown field {unknown[0]!r} next to prompt and completion")
        prompt = _text(row.get("prompt"), "prompt", name, where, max_chars, empty_ok=True)
        completion = _text(row.get("completion"), "completion", name, where, max_chars, empty_ok=False)
        return "prompt_completion", ChatExample(prompt=prompt, completion=completion, where=where)
    raise _reject(name, where, "expected a messages list, or prompt and completion fields")


def read_chat_file(path: Path, limits: DataLimits | None = None, *, name: str | None = None) -> ChatData:
    """Read and check a chat or prompt/completion JSONL file, line by line.

    Args:
        path: the local file.
        limits: ``max_record_bytes`` per line (refused before more of it is read), ``max_text_chars`` per
            message (default ``DataLimits()``).
        name: how messages call the file (default: its name).
    Returns:
        every example, in file order.
    Raises:
        DatasetRejected: not UTF-8, a line that is not JSON or breaks a rule (the line, field and
            reason are named), formats mixed, no examples, or more than ``MAX_CHAT_EXAMPLES``.
    """
    limits = limits or DataLimits()
    name = name or path.name
    if not path.is_file():
        raise DatasetRejected(f"{name} is not a file: chat data is one JSONL file", param=name)
    examples: list[ChatExample] = []
    kind: ChatFormat | None = None
    with path.open("rb") as handle:
        number = 0
        while True:
            check_stop()
            raw = handle.readline(limits.max_record_bytes + 1)
            if not raw:
                break
            number += 1
            where = f"line {number}"
            if len(raw) > limits.max_record_bytes and not raw.endswith(b"\n"):
                raise _reject(
                    name, where, f"longer than {limits.max_record_bytes:,} bytes (max_record_bytes)"
                )
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _reject(name, where, "not UTF-8 text") from exc
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _reject(name, where, f"not valid JSON ({exc.msg})") from exc
            line_kind, example = parse_chat_line(row, name, where, limits)
            if kind is None:
                kind = line_kind
            elif line_kind != kind:
                raise _reject(name, where, f"is in {line_kind} format but earlier lines are in {kind} format")
            if len(examples) >= MAX_CHAT_EXAMPLES:
                raise _reject(name, where, f"more than {MAX_CHAT_EXAMPLES:,} examples in one file")
            examples.append(example)
    if kind is None:
        raise DatasetRejected(f"{name} has no examples", param=name)
    return ChatData(kind, name, examples)


def load_chat_dataset(
    uri: str,
    *,
    max_items: int | None = None,
    limits: DataLimits | None = None,
    should_stop: ShouldStop | None = None,
) -> ChatData:
    """Read chat or prompt/completion examples from a URI (a path, ``file://`` or fsspec URL).

    Args:
        uri: where the JSONL file is.
        max_items: keep at most the first this many examples.
        limits: bounds on lines and messages (see ``read_chat_file``).
        should_stop: asked per download chunk and per line (see ``grft_core.cancel``).
    Returns:
        the examples.
    Raises:
        DatasetRejected: anything ``read_chat_file`` or the fetch rejects.
        TrainingInterrupted: ``should_stop`` returned True.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    with (
        stop_checks(should_stop),
        tempfile.TemporaryDirectory(prefix="grft-chat-", ignore_cleanup_errors=True) as work,
    ):
        check_stop()
        local = fetch.local_copy(uri, Path(work))
        display = Path(uri.rstrip("/")).name or local.name
        data = read_chat_file(local, limits, name=display)
    if max_items is not None:
        data = data.subset(list(range(min(max_items, len(data)))))
    return data


def load_chat_train_val(
    train_uri: str,
    val_uri: str | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_items: int | None = None,
    limits: DataLimits | None = None,
    should_stop: ShouldStop | None = None,
) -> tuple[ChatData, ChatData]:
    """Training examples and validation examples, from ``val_uri`` or a seeded split of the training file.

    Args:
        train_uri, val_uri: the files (the validation file is optional).
        val_fraction: share held out when there is no validation file (at least one example).
        seed: seeds the split.
        max_items, limits, should_stop: as for ``load_chat_dataset`` (applied to each file).
    Returns:
        ``(train, val)``.
    Raises:
        DatasetRejected: a rejected file, two files in different formats, or a single example that
            cannot be split.
    """
    train = load_chat_dataset(train_uri, max_items=max_items, limits=limits, should_stop=should_stop)
    if val_uri is not None:
        val = load_chat_dataset(val_uri, max_items=max_items, limits=limits, should_stop=should_stop)
        if val.format != train.format:
            raise DatasetRejected(
                f"the training file is in {train.format} format but the validation file in {val.format}",
                param="validation_file",
            )
        return train, val
    if len(train) < 2:
        raise DatasetRejected(
            f"{train.name} has one example: too few to hold out a validation split", param="val_fraction"
        )
    count = min(len(train) - 1, max(1, round(len(train) * val_fraction)))
    held = set(random.Random(seed).sample(range(len(train)), count))
    kept = [i for i in range(len(train)) if i not in held]
    return train.subset(kept), train.subset(sorted(held))
