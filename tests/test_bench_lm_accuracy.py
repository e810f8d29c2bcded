"""The language-model accuracy benchmark runs end to end on a tiny LLaMA for one step per method.

Accuracies of a random tiny model say nothing; the report's shape and the parameter bookkeeping do.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import lm_accuracy


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
