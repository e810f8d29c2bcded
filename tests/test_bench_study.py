"""bench/study.py end to end on tiny models: every run through lr=auto, resumable, paired report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import study, study_report
from grft_core.method import autotune

ARGV = ["--tiny", "--plan", "main", "--tasks", "digits", "--workers", "1"]
ARGV += ["--variants", "grft_rows,random_rows,lora_matched"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study") / "study_tiny.jsonl"
    assert study.main([*ARGV, "--out", str(out)]) == 0
    return out


def test_every_run_searched_its_rate(finished: Path) -> None:
    records = [json.loads(line) for line in finished.read_text().splitlines()]
    assert sorted(r["key"] for r in records) == sorted(
        f"digits/{v}/{s}" for v in ("grft_rows", "random_rows", "lora_matched") for s in (0, 1)
    )
    for rec in records:
        assert rec["status"] == "ok", rec
        method = "lora" if rec["variant"] == "lora_matched" else "grft"
        # The rate trained with is one of the search's candidates, not the config's default.
        assert rec["config"]["lr"] in autotune.lr_grid(method)
        assert rec["config"]["auto"] == ["lr"]
        assert rec["autotune"]["used_steps"] <= rec["autotune"]["budget_steps"]
        assert 0 <= rec["test_accuracy"] <= 1


def test_a_second_run_resumes_and_runs_nothing(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = finished.read_text()
    study.main([*ARGV, "--out", str(finished)])
    assert "6 already done, 0 to run" in capsys.readouterr().out
    assert finished.read_text() == before


def test_report_pairs_seeds(finished: Path) -> None:
    report = json.loads(finished.with_suffix(".json").read_text())
    random = report["comparisons"]["gradient selection beats random rows"]
    assert random["pairs"] == 2
    records = [json.loads(line) for line in finished.read_text().splitlines()]
    acc = {(r["variant"], r["seed"]): r["test_accuracy"] for r in records}
    expected = [acc[("grft_rows", s)] - acc[("random_rows", s)] for s in (0, 1)]
    assert random["mean_diff"] == pytest.approx(sum(expected) / 2)
    assert "## Paired comparisons" in finished.with_suffix(".md").read_text()
    # A report outside bench/results keeps its plots beside it, not in the repository's plots folder.
    assert [Path(p).parent for p in report["plots"]] == [finished.parent] * len(report["plots"])


def test_paired_skips_seeds_that_failed() -> None:
    def rec(acc: float) -> dict[str, float]:
        return {"test_accuracy": acc}

    data = {("t", "a"): {0: rec(0.9), 1: rec(0.8), 2: rec(0.7)}, ("t", "b"): {0: rec(0.5), 2: rec(0.8)}}
    out = study_report.paired(data, ["t"], "a", "b")  # type: ignore[arg-type]
    assert out["pairs"] == 2
    assert out["mean_diff"] == pytest.approx((0.4 - 0.1) / 2)
    assert (out["wins"], out["losses"]) == (1, 1)
    assert out["p"] == 1.0  # two pairs of opposite sign: every flip is at least as extreme


def test_variant_names_of_the_selection_grid_are_distinct() -> None:
    names = [v.name for v in study.PLANS["selection"]]
    assert len(names) == len(set(names)) == 16
    assert {"grft_rows", "random_rows", "magnitude_rows"} <= set(names)


def test_full_mode_is_the_accuracy_study() -> None:
    from bench.run import commands

    full = [c[2:] for c in commands(False, 1)]
    assert [c[0] for c in full] == ["bench.study", "bench.lm_accuracy"]
    assert full[1][1:3] == ["--mode", "study"]
    assert "0,1,2" in full[1]
    quick = [c[2] for c in commands(True, 1)]
    assert quick[:2] == ["bench.study", "bench.lm_accuracy"]
    assert "bench.serving" in quick


def test_structural_claims_that_need_no_training(finished: Path) -> None:
    report = json.loads(finished.with_suffix(".json").read_text())
    s = report["summary"]
    # The control trains exactly GRFT's parameter count; the matched rank lands closer than r=8 would.
    assert s["digits/random_rows"]["trainable_params"] == s["digits/grft_rows"]["trainable_params"]
    grft = s["digits/grft_rows"]["trainable_params"]
    assert s["digits/lora_matched"]["lora_rank"] < 8
    assert abs(s["digits/lora_matched"]["trainable_params"] - grft) < grft


def test_matched_rank_picks_the_closest_count() -> None:
    # GRFT body 1,000 parameters; LoRA 300 per rank: r=3 (900) is closer than r=4 (1,200).
    assert study.matched_rank(1_000 + 50, 50, 300) == 3
    assert study.matched_rank(1_200 + 50, 50, 300) == 4
    assert study.matched_rank(10 + 50, 50, 300) == 1
