"""The load script runs end to end against a real ``grft serve`` on loopback and reports every kind.

Only the report's shape and the absence of errors are checked: latencies on a shared CPU say nothing in
a unit test (the numbers live in bench/RESULTS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.load import main, percentile


def test_percentile_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0


def test_tiny_mixed_run_answers_every_request(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    report = main(["--mode", "mixed", "--requests", "3", "--concurrency", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    for kind in ("get_jobs", "predict", "predictions_x8"):
        entry = report[kind]
        assert entry["requests"] == 3
        assert entry["errors"] == 0, entry
        assert entry["statuses"] == {"200": 3}
        assert 0 < entry["p50_ms"] <= entry["p99_ms"]
