"""``make demo-chat``'s questions, answers and training file, on the real ARC-Easy items it uses."""

from __future__ import annotations

from pathlib import Path

from api.demo_chat import LETTERS, answer_letter, question, training_lines
from grft_core.data.chat import read_chat_file
from grft_core.data.commonsense import ChoiceItem, load_split


def test_question_lists_every_choice_with_its_letter() -> None:
    item = ChoiceItem("Question: Which is a gas?\nAnswer:", ("rock", "steam", "ice"), 1)

    text = question(item)

    assert text.splitlines() == [
        "Which is a gas?",
        "A. rock",
        "B. steam",
        "C. ice",
        "Answer with the letter of the correct choice only.",
    ]


def test_answer_letter_reads_the_first_letter_in_range_only() -> None:
    assert answer_letter(" b. steam", 3) == "B"
    assert answer_letter("C", 3) == "C"
    assert answer_letter("D", 3) is None  # not one of this question's choices
    assert answer_letter("The answer is B", 3) is None  # prose is not an answer
    assert answer_letter("", 3) is None


def test_training_file_is_a_valid_chat_file_of_gold_answers(tmp_path: Path) -> None:
    train, test = load_split("arc_easy", train_size=20, test_size=10)
    path = tmp_path / "train.jsonl"
    path.write_bytes(training_lines(train))

    data = read_chat_file(path)

    assert len(data.examples) == len(train)
    first = data.examples[0].messages
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[1]["content"] == f"{LETTERS[train[0].gold]}. {train[0].choices[train[0].gold]}"
    assert not {question(i) for i in test} & {e.messages[0]["content"] for e in data.examples}
