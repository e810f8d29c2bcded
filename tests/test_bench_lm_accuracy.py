"""The language-model accuracy benchmark runs end to end on a tiny LLaMA for one step per method.

Accuracies of a random tiny model say nothing; the report's shape and the parameter bookkeeping do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import lm_accuracy
from grft_core.data.commonsense import load_split


def test_tiny_run_reports_every_method(tmp_path: Path) -> None:
    out = tmp_path / "lm.json"

    lm_accuracy.main(["--tiny", "--tasks", "arc_easy", "--threads", "1", "--json", str(out)])

    report = json.loads(out.read_text())
    assert report["mode"] == "tiny"
    entry = report["tasks"]["arc_easy"]
    assert entry["train_items"] == 8
    assert entry["test_items"] == 4
    runs = {r["method"]: r for r in entry["runs"]}
    assert set(runs) == set(lm_accuracy.METHODS)
    for method, r in runs.items():
        assert 0.0 <= r["test_accuracy"] <= 1.0
        if method == "base":
            assert r["trainable_params"] == 0
            continue
        assert len(r["step_seconds"]) == 1
        assert r["trainable_params"] > 0
        assert r["adapter_bytes"] > 0
    # GRFT rows, columns and the random control train the same count; full trains everything.
    assert runs["grft_rows"]["trainable_params"] == runs["random_rows"]["trainable_params"]
    assert runs["full"]["trainable_pct"] == 100.0
    assert runs["lora_r8"]["lora_rank"] == 8
    matched, grft = runs["lora_matched"]["trainable_params"], runs["grft_rows"]["trainable_params"]
    assert abs(matched - grft) <= runs["lora_r8"]["trainable_params"] / 8


def test_tiny_seeds_run_pairs_with_grft_rows(tmp_path: Path) -> None:
    out = tmp_path / "study.json"
    methods = ["base", "grft_rows", "random_rows"]
    argv = ["--tiny", "--tasks", "arc_easy", "--threads", "1", "--seeds", "0,1", "--json", str(out)]

    lm_accuracy.main([*argv, "--methods", *methods])

    report = json.loads(out.read_text())
    assert report["seeds"] == [0, 1]
    runs = report["tasks"]["arc_easy"]["runs"]
    # The base is scored once per task; each trained method once per seed.
    assert [(r["method"], r["seed"]) for r in runs] == [
        ("base", None),
        ("grft_rows", 0),
        ("random_rows", 0),
        ("grft_rows", 1),
        ("random_rows", 1),
    ]
    by = {(r["method"], r["seed"]): r for r in runs}
    # Another seed draws other training items in another order: the last training loss moves.
    assert by[("grft_rows", 0)]["final_loss"] != by[("grft_rows", 1)]["final_loss"]
    rows = report["summary"]["tasks"]["arc_easy"]
    assert rows["grft_rows"]["seeds"] == [0, 1]
    accs = [by[("grft_rows", s)]["test_accuracy"] for s in (0, 1)]
    assert rows["grft_rows"]["accuracy"] == accs
    assert rows["grft_rows"]["mean"] == sum(accs) / 2
    pooled = report["summary"]["pooled"]
    assert set(pooled) == {"base", "random_rows"}
    expected = [
        by[("grft_rows", s)]["test_accuracy"] - by[("random_rows", s)]["test_accuracy"] for s in (0, 1)
    ]
    assert [d["diff"] for d in pooled["random_rows"]["pairs"]] == expected
    assert pooled["random_rows"]["n"] == 2
    assert pooled["random_rows"]["smallest_possible_p"] == 0.5
    assert 0.5 <= pooled["random_rows"]["p_value"] <= 1.0
    table = out.with_suffix(".md").read_text()
    assert "| task | method | seed 0 | seed 1 | mean ± std |" in table
    assert "| arc_easy | random_rows | " in table
    assert "grft_rows − method" in table


def test_train_items_follow_the_seed_test_items_do_not() -> None:
    pool, test = load_split("boolq", test_size=10)
    a, b = lm_accuracy.draw_train(pool, 16, 0), lm_accuracy.draw_train(pool, 16, 1)
    assert a == lm_accuracy.draw_train(pool, 16, 0)
    assert a != b
    assert len(set(map(id, a))) == 16
    assert a != pool[:16]  # a draw, not the first items
    assert load_split("boolq", test_size=10)[1] == test
    assert lm_accuracy.draw_train(pool[:5], 16, 0) != []  # fewer items than asked: all of them
    assert len(lm_accuracy.draw_train(pool[:5], 16, 0)) == 5


def test_seeds_and_mode_are_checked(tmp_path: Path) -> None:
    assert lm_accuracy.parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("0,0", "a", "-1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            lm_accuracy.parse_seeds(bad)
    with pytest.raises(SystemExit):
        lm_accuracy.main(["--tiny", "--mode", "study", "--json", str(tmp_path / "x.json")])
