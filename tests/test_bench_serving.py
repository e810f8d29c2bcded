"""The serving benchmark runs end to end on tiny models and writes a complete report.

Only the report's shape is checked: timings on a shared CPU say nothing in a unit test. The benchmark
itself checks, before timing, that its GRFT and PEFT mixed batches compute what each item alone does.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.serving import MODELS, main


def test_tiny_run_reports_every_method_ratio_and_load(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    returned = main(["--tiny", "--json", str(out)])  # the session's model store ($GRFT_MODEL_DIR)
    report = json.loads(out.read_text())
    assert report["models"].keys() == returned["models"].keys() == set(MODELS)
    distinct = report["distinct_adapters"]
    assert distinct == [1, 4]
    for entry in report["models"].values():
        ranks = entry["info"]["peft_ranks"]
        assert entry["info"]["matched_rank"] in ranks
        assert 8 in ranks
        expected = {"base", "engine_base"} | {f"grft_{n}" for n in distinct}
        expected |= {f"peft_r{r}_{n}" for n in distinct for r in ranks}
        assert set(entry["methods"]) == expected
        for result in entry["methods"].values():
            assert len(result["latency_s"]["values"]) == report["settings"]["rounds"]
            assert result["items_per_s"] > 0
            assert 0 < result["p50_ms"] <= result["p99_ms"]
        for n in distinct:
            for other in ["base", "engine_base", *(f"peft_r{r}_{n}" for r in ranks)]:
                assert entry["ratios"][f"grft_{n}/{other}"]["median"] > 0
        assert all(isinstance(t["met"], bool) for t in entry["targets"].values())
    load = report["load"]
    assert set(load["cold_load"]) == {"k1", "k8"}
    for cold in load["cold_load"].values():
        assert cold["total_s"]["median"] > 0
        assert cold["fetch_s"]["median"] > 0
        assert cold["file_bytes"] > 0
    assert load["cold_load"]["k8"]["file_bytes"] > load["cold_load"]["k1"]["file_bytes"]
    assert load["warm_switch_s"]["median"] > 0
    assert report["machine"]["torch_threads"] == 1
