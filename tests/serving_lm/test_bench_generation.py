"""``bench.generation`` at smoke sizes: every method runs, the engine agrees with the merged model, and
the report holds the ratios RESULTS.md quotes."""

from __future__ import annotations

import json
from pathlib import Path

from bench import generation


def test_tiny_run_reports_every_method_and_ratio(tmp_path: Path) -> None:
    out = tmp_path / "generation.json"

    assert generation.main(["--tiny", "--json", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["equivalence"]["agreement"] == 1.0
    methods = {"hf_base", "engine_base"} | {f"{m}_{n}" for m in ("grft", "peft") for n in (1, 8, 32)}
    assert set(report["methods"]) == methods
    assert all(m["tokens_per_s"] > 0 for m in report["methods"].values())
    assert {"grft_32/hf_base", "grft_32/peft_32", "grft_1/engine_base"} <= set(report["ratios"])
