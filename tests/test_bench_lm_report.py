"""Seed statistics and paired comparisons of the language-model report, on hand-made runs."""

from __future__ import annotations

from typing import Any

import pytest

from bench.lm_report import markdown, summarize


def _run(method: str, seed: int | None, acc: float) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": acc,
        "trainable_params": 0 if method == "base" else 10,
        "trainable_pct": 0.0,
        "adapter_bytes": 0 if method == "base" else 40,
    }


def _report() -> dict[str, Any]:
    grft = {0: 0.60, 1: 0.65, 2: 0.62}
    rand = {0: 0.55, 1: 0.60, 2: 0.61}  # GRFT ahead on every seed
    lora = {0: 0.62, 1: 0.65, 2: 0.60}  # one loss, one tie, one win
    runs = [_run("base", None, 0.50)]
    for s in (0, 1, 2):
        runs += [
            _run("grft_rows", s, grft[s]),
            _run("random_rows", s, rand[s]),
            _run("lora_matched", s, lora[s]),
        ]
    return {"mode": "study", "seeds": [0, 1, 2], "tasks": {"boolq": {"test_items": 200, "runs": runs}}}


def test_pairs_means_and_exact_p() -> None:
    summary = summarize(_report())

    rows = summary["tasks"]["boolq"]
    assert rows["grft_rows"]["accuracy"] == [0.60, 0.65, 0.62]
    assert rows["grft_rows"]["mean"] == pytest.approx(0.62333333)
    assert rows["grft_rows"]["std"] == pytest.approx(0.0251661, abs=1e-6)
    assert rows["random_rows"]["grft_rows_minus_method"] == pytest.approx([0.05, 0.05, 0.01])
    pooled = summary["pooled"]
    # Three positive differences: only the observed signs and their flip reach the sum, 2 of 8.
    assert pooled["random_rows"]["p_value"] == pytest.approx(0.25)
    assert pooled["random_rows"]["mean_diff"] == pytest.approx(0.11 / 3)
    # Differences -0.02, 0, +0.02 sum to zero: every signing is as extreme, p = 1.
    assert pooled["lora_matched"]["p_value"] == pytest.approx(1.0)
    # The base has one score and pairs with each seed of GRFT rows.
    assert [d["diff"] for d in pooled["base"]["pairs"]] == pytest.approx([0.10, 0.15, 0.12])
    assert pooled["base"]["smallest_possible_p"] == 0.25


def test_pairs_pool_over_tasks() -> None:
    report = _report()
    report["tasks"]["piqa"] = {"test_items": 200, "runs": [dict(r) for r in report["tasks"]["boolq"]["runs"]]}

    pooled = summarize(report)["pooled"]["random_rows"]

    assert pooled["n"] == 6
    assert [(d["task"], d["seed"]) for d in pooled["pairs"]][:4] == [
        ("boolq", 0),
        ("boolq", 1),
        ("boolq", 2),
        ("piqa", 0),
    ]
    assert pooled["p_value"] == pytest.approx(2 / 64)


def test_markdown_shows_seed_columns_and_p() -> None:
    text = markdown(_report())

    assert "| boolq | grft_rows | 0.600 | 0.650 | 0.620 | 0.623 ± 0.025 | 10 | 40 |" in text
    assert "| boolq | base | — | — | — | 0.500 (no seed) | 0 | 0 |" in text
    assert "| random_rows | 3 | boolq/0: +5.0, boolq/1: +5.0, boolq/2: +1.0 | +3.7 | 0.250 | 0.250 |" in text
