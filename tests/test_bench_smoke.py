"""The step-time benchmark runs end to end on tiny models and writes a complete report.

Only the report's shape is checked: timings on a shared CPU say nothing in a unit test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.step_time import METHODS, MODELS, main

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_reports_every_method(tmp_path: Path) -> None:
    out = tmp_path / "step_time.json"
    main(["--tiny", "--rounds", "1", "--warmup", "1", "--no-peak", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["models"]) == set(MODELS)
    for entry in report["models"].values():
        assert set(entry["methods"]) == set(METHODS)
        for result in entry["methods"].values():
            assert len(result["step_s"]["values"]) == 1
            assert result["step_s"]["median"] > 0
            assert result["grad_opt_bytes"] > 0
        for key in ("grft/full", "grft/masked_dense", "grft/lora", "grft/gps", "grft/lora_matched"):
            assert entry["ratios"][key]["median"] > 0
        # The structural claim needs no timing: GRFT's trainable state is smaller than LoRA's.
        methods = entry["methods"]
        assert methods["grft"]["grad_opt_bytes"] < methods["lora"]["grad_opt_bytes"]
        assert methods["grft"]["grad_opt_bytes"] < methods["masked_dense"]["grad_opt_bytes"]
        assert methods["grft"]["grad_opt_bytes"] < methods["gps"]["grad_opt_bytes"]
        assert methods["lora_matched"]["lora_rank"] >= 1


def test_peak_only_prints_json() -> None:
    cmd = [sys.executable, "-m", "bench.step_time", "--tiny", "--models", "vit", "--method", "grft"]
    proc = subprocess.run(cmd + ["--peak-only"], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["method"] == "grft"
    assert result["steps"] == 3
    assert result["hwm_bytes"] >= result["after_build_bytes"] > 0
    assert result["peak_bytes"] > 0
