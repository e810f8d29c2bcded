"""Chat and prompt/completion JSONL: good files load, every bad line is refused naming line, field, reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from grft_core.data.chat import load_chat_train_val, read_chat_file
from grft_core.data.limits import DataLimits
from grft_core.errors import DatasetRejected
from tests.lm.helpers import chat_lines, write_jsonl

GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


class TestGoodFiles:
    def test_chat_multi_turn_with_weights(self, tmp_path: Path) -> None:
        rows = chat_lines(3)
        rows[0]["messages"][2]["weight"] = 0
        rows[1]["messages"][1]["name"] = "ann"
        data = read_chat_file(write_jsonl(tmp_path / "chat.jsonl", rows))

        assert (data.format, len(data)) == ("chat", 3)
        assert [m["role"] for m in data.examples[0].messages] == [
            "system", "user", "assistant", "user", "assistant",
        ]  # fmt: skip
        assert [m["weight"] for m in data.examples[0].messages] == [1, 1, 0, 1, 1]
        assert data.examples[1].messages[1]["name"] == "ann"
        assert data.examples[2].where == "line 3"

    def test_prompt_completion_and_blank_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "pc.jsonl"
        path.write_text('{"prompt": "2+2=", "completion": " 4"}\n\n{"prompt": "", "completion": "x"}\n')
        data = read_chat_file(path)

        assert (data.format, len(data)) == ("prompt_completion", 2)
        assert (data.examples[0].prompt, data.examples[0].completion) == ("2+2=", " 4")
        assert data.examples[1].where == "line 3"

    def test_split_is_seeded_and_disjoint(self, tmp_path: Path) -> None:
        path = write_jsonl(tmp_path / "chat.jsonl", chat_lines(20))
        train, val = load_chat_train_val(str(path), val_fraction=0.2, seed=3)
        again, _ = load_chat_train_val(path.as_uri(), val_fraction=0.2, seed=3)

        assert (len(train), len(val)) == (16, 4)
        assert {e.where for e in train.examples}.isdisjoint({e.where for e in val.examples})
        assert [e.where for e in again.examples] == [e.where for e in train.examples]


# (line, the words the message must hold)
BAD_LINES: list[tuple[Any, tuple[str, ...]]] = [
    ("not json", ("not valid JSON",)),
    ([1, 2], ("not a JSON object",)),
    ({"text": "x"}, ("expected a messages list",)),
    ({"messages": []}, ("messages must be a non-empty list",)),
    ({"messages": "hi"}, ("messages must be a non-empty list",)),
    ({"messages": ["hi"]}, ("messages[0]", "object")),
    ({"messages": [{"role": "tool", "content": "x"}]}, ("messages[0].role", "'tool'")),
    ({"messages": [{"role": "user", "content": 3}]}, ("messages[0].content", "must be a string", "int")),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
     ("messages[1].content", "empty")),
    ({"messages": [{"role": "user", "content": "q"}]}, ("no assistant message",)),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
     ("no assistant message",)),
    ({"messages": [{"role": "assistant", "content": "a", "weight": 2}]}, ("messages[0].weight", "0 or 1")),
    ({"messages": [{"role": "user", "content": "a", "weight": 0}]}, ("messages[0].weight", "assistant")),
    ({"messages": [{"role": "assistant", "content": "a", "mood": "x"}]}, ("messages[0]", "'mood'")),
    ({"messages": [{"role": "assistant", "content": "a", "tool_calls": []}]}, ("tool calls",)),
    ({"messages": [{"role": "assistant", "content": "a"}], "extra": 1}, ("'extra'",)),
    ({"prompt": "p"}, ("completion must be a string", "null")),
    ({"prompt": 1, "completion": "c"}, ("prompt must be a string",)),
    ({"prompt": "p", "completion": ""}, ("completion is empty",)),
]  # fmt: skip


class TestBadLines:
    @pytest.mark.parametrize(("bad", "words"), BAD_LINES)
    def test_names_line_field_and_reason(self, tmp_path: Path, bad: Any, words: tuple[str, ...]) -> None:
        good = json.dumps(
            GOOD_CHAT
            if not isinstance(bad, dict) or "prompt" not in bad
            else {"prompt": "a", "completion": "b"}
        )
        line = bad if isinstance(bad, str) else json.dumps(bad)
        path = tmp_path / "data.jsonl"
        path.write_text(f"{good}\n{good}\n{line}\n")

        with pytest.raises(DatasetRejected) as caught:
            read_chat_file(path)

        assert caught.value.param == "line 3"
        assert str(caught.value.message).startswith("data.jsonl: line 3: ")
        for word in words:
            assert word in caught.value.message

    def test_mixed_formats(self, tmp_path: Path) -> None:
        path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD_CHAT, {"prompt": "a", "completion": "b"}])
        with pytest.raises(DatasetRejected, match="line 2: is in prompt_completion format but earlier"):
            read_chat_file(path)

    def test_line_over_the_byte_limit_is_refused_before_it_is_read(self, tmp_path: Path) -> None:
        long = {"messages": [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}]}
        path = write_jsonl(tmp_path / "long.jsonl", [GOOD_CHAT, long])
        with pytest.raises(DatasetRejected, match=r"line 2: longer than 1,000 bytes \(max_record_bytes\)"):
            read_chat_file(path, DataLimits(max_record_bytes=1000))

    def test_message_over_the_character_limit(self, tmp_path: Path) -> None:
        long = {"messages": [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "y"}]}
        path = write_jsonl(tmp_path / "long.jsonl", [long])
        with pytest.raises(
            DatasetRejected, match=r"messages\[0\].content has 300 characters.*max_text_chars"
        ):
            read_chat_file(path, DataLimits(max_text_chars=100))

    def test_empty_file_and_not_utf8(self, tmp_path: Path) -> None:
        empty = tmp_path / "empty.jsonl"
        empty.write_text("\n\n")
        with pytest.raises(DatasetRejected, match="has no examples"):
            read_chat_file(empty)
        latin = tmp_path / "latin.jsonl"
        latin.write_bytes(json.dumps(GOOD_CHAT).encode() + b"\n\xff\xfe\n")
        with pytest.raises(DatasetRejected, match="line 2: not UTF-8"):
            read_chat_file(latin)

    def test_one_example_cannot_be_split(self, tmp_path: Path) -> None:
        path = write_jsonl(tmp_path / "one.jsonl", [GOOD_CHAT])
        with pytest.raises(DatasetRejected, match="too few to hold out") as caught:
            load_chat_train_val(str(path))
        assert caught.value.param == "val_fraction"
