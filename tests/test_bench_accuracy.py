"""The accuracy and ablation benchmarks run end to end on tiny models and write complete reports.

Only the reports' shape and sanity are checked: accuracies of tiny random models on a few items say
nothing, and no timing is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import ablations, accuracy, run


def test_accuracy_tiny_reports_every_method(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.json"
    plots = tmp_path / "plots"
    accuracy.main(
        ["--tiny", "--tasks", "digits", "--threads", "1", "--json", str(out), "--plots", str(plots)]
    )
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny"
    assert report["machine"]["torch_threads"] == 1
    assert set(report["tasks"]) == {"digits"}
    for entry in report["tasks"].values():
        assert set(entry["runs"]) == set(accuracy.METHODS)
        assert entry["data"]["test_items"] > 0
        for method, summary in entry["summary"].items():
            if method == "gps" and summary["status"] == "pending":
                continue
            assert summary["status"] == "ok", method
            assert 0.0 <= summary["test_accuracy_mean"] <= 1.0
            assert summary["trainable_params"] > 0
            assert 0.0 < summary["trainable_pct"] <= 100.0
            assert summary["adapter_bytes"] > 0
            run_record = entry["runs"][method][0]
            assert run_record["config"]["seed"] == 0
            assert run_record["seconds"] > 0
        s = entry["summary"]
        # Structural claims that need no training: the control trains exactly GRFT's parameter count,
        # GRFT's adapter is smaller than LoRA r=8's, and the matched rank lands closer than r=8 does.
        assert s["random_rows"]["trainable_params"] == s["grft_rows"]["trainable_params"]
        assert s["grft_rows"]["adapter_bytes"] < s["lora_r8"]["adapter_bytes"]
        grft = s["grft_rows"]["trainable_params"]
        gap_matched = abs(s["lora_matched"]["trainable_params"] - grft)
        assert gap_matched <= abs(s["lora_r8"]["trainable_params"] - grft)
        assert entry["runs"]["random_rows"][0]["config"]["selection_strategy"] == "random"
    assert (plots / "accuracy_vs_params_tiny.png").read_bytes()[:4] == b"\x89PNG"
    table = out.with_suffix(".md").read_text()
    assert "| digits | grft_rows |" in table


def test_matched_rank_picks_the_closest_count() -> None:
    # GRFT body 1,000 parameters; LoRA 300 per rank: r=3 (900) is closer than r=4 (1,200).
    assert accuracy.matched_rank(1_000 + 50, 50, 300) == 3
    assert accuracy.matched_rank(1_200 + 50, 50, 300) == 4
    assert accuracy.matched_rank(10 + 50, 50, 300) == 1


def test_ablations_tiny_writes_tables_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "ablations.json"
    plots = tmp_path / "plots"
    ablations.main(
        ["--tiny", "--tasks", "bbc_news", "--threads", "1", "--json", str(out), "--plots", str(plots)]
    )
    report = json.loads(out.read_text())
    points = {name for name, _ in ablations.grid()}
    for entry in report["tasks"].values():
        assert set(entry["points"]) == points
        for point in entry["points"].values():
            assert 0.0 <= point["test_accuracy_mean"] <= 1.0
            assert point["trainable_params"] > 0
        k_counts = [entry["points"][ablations._name(k=k)]["trainable_params"] for k in ablations.KS]
        assert k_counts == sorted(k_counts)
        assert k_counts[0] < k_counts[-1]
    names = {Path(p).name for p in report["plots"]}
    assert names == {f"ablation_{n}_tiny.png" for n in ("k", "lambda", "axis", "selection")}
    for name in names:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| λ |" in out.with_suffix(".md").read_text()


def test_suite_lists_only_existing_scripts() -> None:
    cmds = run.commands(quick=True, threads=1)
    modules = [c[2] for c in cmds]
    assert modules[:2] == ["bench.accuracy", "bench.ablations"]
    assert all("--quick" in c for c in cmds)
    assert cmds[0][-2:] == ["--threads", "1"]
    assert [c[2] for c in run.commands(quick=False, threads=None, only=["ablations"])] == ["bench.ablations"]


def test_rerunning_some_tasks_keeps_the_others(tmp_path: Path) -> None:
    from bench.realdata import kept_tasks

    out = tmp_path / "report.json"
    out.write_text(json.dumps({"mode": "quick", "tasks": {"a": {"x": 1}, "b": {"x": 2}}}))
    assert kept_tasks(out, "quick", ["a", "b", "c"], ["b"]) == {"a": {"x": 1}}
    assert kept_tasks(out, "full", ["a", "b", "c"], ["b"]) == {}
    assert kept_tasks(out, "quick", ["a", "b"], ["a", "b"]) == {}
