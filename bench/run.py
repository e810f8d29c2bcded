"""The benchmark suite: ``make bench`` (``--quick``) and ``make bench-full``.

Runs, each in its own process so one's threads and memory never disturb the next: the accuracy study
(``bench/study.py``: every method under the same learning-rate search, and the ablations), the
language-model study, and in quick mode the training-cost scripts (``step_time``, ``selection_pass``,
``adapter_size``) and the serving benchmark. Every script writes its JSON and table
under ``bench/results/``; this prints how long each took and exits non-zero if any failed.

    uv run --frozen python -m bench.run --quick --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LM_STUDY = [
    "--tasks", "boolq", "--seeds", "0,1,2", "--methods", "base", "grft_rows", "random_rows", "lora_matched",
]  # fmt: skip
# (module, extra arguments of the quick mode, of the full mode; None: not in that mode, takes --threads).
# The full mode is the accuracy study only (bench/study.py and the language-model study), sized to fit
# about 2.5 hours on an idle 2-core CPU; the cost benchmarks are quick by design and run in make bench.
SCRIPTS: tuple[tuple[str, list[str] | None, list[str] | None, bool], ...] = (
    ("bench.study", ["--quick", "--plan", "main,selection"], [], True),
    ("bench.lm_accuracy", ["--quick"], ["--mode", "study", *LM_STUDY], True),
    ("bench.step_time", ["--quick"], None, False),
    ("bench.selection_pass", ["--quick"], None, False),
    ("bench.adapter_size", ["--quick"], None, False),
    ("bench.serving", ["--quick"], None, False),
)


def commands(quick: bool, threads: int | None, only: Sequence[str] | None = None) -> list[list[str]]:
    """The command line of every script of the mode that exists (and is in ``only``, when given)."""
    out = []
    for module, quick_args, full_args, takes_threads in SCRIPTS:
        extra = quick_args if quick else full_args
        if extra is None or (only and module.rsplit(".", 1)[1] not in only):
            continue
        if importlib.util.find_spec(module) is None:
            continue
        cmd = [sys.executable, "-m", module, *extra]
        if threads and takes_threads:
            cmd += ["--threads", str(threads)]
        out.append(cmd)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="subsets and one seed")
    p.add_argument("--threads", type=int, default=None, help="torch threads per study worker")
    p.add_argument("--only", help="comma-separated script names, e.g. accuracy,ablations")
    args = p.parse_args(argv)
    timings: dict[str, float] = {}
    failed = []
    for cmd in commands(args.quick, args.threads, args.only.split(",") if args.only else None):
        name = cmd[2]
        print(f"== {' '.join(cmd[2:])}", flush=True)
        started = time.perf_counter()
        if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
            failed.append(name)
        timings[name] = round(time.perf_counter() - started, 1)
        print(f"== {name}: {timings[name]:.0f}s", flush=True)
    print(json.dumps({"seconds": timings, "failed": failed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
