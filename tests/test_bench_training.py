"""The training-cost benchmarks run end to end at smoke sizes and write complete reports.

Only the reports' shape and sizes are checked: timings on a shared CPU say nothing in a unit test.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import adapter_size, selection_pass

ROOT = Path(__file__).resolve().parents[1]


def test_adapter_size_writes_every_variant(tmp_path: Path) -> None:
    report = adapter_size.main(["--tiny", "--models", "vit,llama", "--json", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text())["models"].keys() == report["models"].keys()
    # The safetensors size calculator used for the 16-layer LLaMA matched every real file.
    assert report["calculator_exact"] is True
    assert set(report["models"]) == {"vit", "llama (2 layers)", "llama (16 layers)"}
    for entry in report["models"].values():
        v = {label: r["bytes"] for label, r in entry["variants"].items()}
        assert all(b > 0 for b in v.values())
        assert v["grft k=1 fp16"] < v["grft k=1 fp32"] < v["grft k=2 fp32"]
        assert v["grft k=1 fp32"] < v["lora r=8 fp32"] < v["full checkpoint fp32"]
        gps = [r for label, r in entry["variants"].items() if label.startswith("gps K=1")]
        assert sum(bool(r["chosen"]) for r in gps) == 1
    two, sixteen = report["models"]["llama (2 layers)"], report["models"]["llama (16 layers)"]
    assert all(r["computed"] for r in sixteen["variants"].values())
    for label, r in two["variants"].items():
        assert sixteen["variants"][label]["bytes"] > r["bytes"], label


def test_selection_pass_reports_parts_and_ratios(tmp_path: Path) -> None:
    report = selection_pass.main(["--tiny", "--no-peak", "--json", str(tmp_path / "s.json")])
    assert report is not None
    assert set(report["parts"]) == set(selection_pass.PARTS)
    assert all(p["seconds"]["median"] > 0 for p in report["parts"].values())
    assert set(report["ratios"]) == {"selection/epoch", "gps_selection/epoch"}
    assert report["settings"]["train_items"] > 0


def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    cmd = ["bash", "bench/gpu_check.sh", "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(summary["parts"]) == {
        "step_time_vit_llama2",
        "step_time_llama16",
        "selection_pass",
        "finetune_check",
        "serving",
        "generation",
    }
    for name, part in summary["parts"].items():
        assert part["ok"], name
        assert json.loads(Path(part["json"]).read_text())
    step = json.loads((tmp_path / "gpu_check_step_time_llama16.json").read_text())
    assert step["models"]["llama"]["info"]["arch"].startswith("transformers LlamaModel")
    assert "grft/masked_dense" in step["models"]["llama"]["ratios"]
    serving = json.loads((tmp_path / "gpu_check_serving.json").read_text())
    assert serving["models"]["text"]["methods"]["grft_4"]["items_per_s"] > 0
    generation = json.loads((tmp_path / "gpu_check_generation.json").read_text())
    assert generation["methods"]["grft_32"]["tokens_per_s"] > 0
