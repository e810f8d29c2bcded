"""The selection pass against one training epoch on the same data: time and peak memory.

Why real data and the real trainer pieces
-----------------------------------------
The pass's cost depends on what it runs: two augmented views per item through the backbone and the
supervised-contrastive loss (the default), gradients of every eligible matrix accumulated in fp32, no
optimizer. So it is timed exactly as ``grft_core.method.trainer.fit`` runs it: ``grft_core.method.setup.
compute_selection`` (GRFT rows) and ``compute_gps_selection`` (the GPS-style entries, for comparison)
over the whole training split, against one epoch of ``fit`` with ``method="grft"`` on that split (the
selection handed in, so the epoch is training only; validation is two items). The default task is the
packaged ImageNet MobileNetV2 (``mobilenetv2_100`` from the registry) on scikit-learn's digits at 32 px,
real and small enough for two CPU cores; ``--data bbc`` uses all-MiniLM-L6-v2 on BBC News. ``--tiny``
uses the random-init ``tiny-cnn`` on 40 digits.

Each round runs the three parts in turn on fresh copies of the same loaded model (interleaved, as in
``bench.step_time``), and the per-round ratios pass/epoch are reported with median and spread. Peak
memory: each part alone in a fresh process (``--part X --peak-only``), above the memory held after
loading the model and the data (``VmHWM`` on CPU, ``max_memory_allocated`` on CUDA).

On CUDA ``fit`` trains under bf16 autocast, while the selection pass runs in fp32 (as the trainer runs
it); the ratio is reported as the product behaves.

Usage::

    uv run --frozen python -m bench.selection_pass [--data digits|bbc] [--rounds 5] [--quick] [--tiny]
        [--device cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import (
    ROOT,
    PeakProbe,
    add_common_args,
    command_line,
    machine_info,
    mib,
    ratio_summary,
    setup_torch,
    summarize,
    sync,
    write_report,
)
from grft_core import GRFTConfig, ModelRegistry, fit, load_train_val, make_preprocessor
from grft_core.data import bbc_news_csv, digits_image_folder
from grft_core.method import BatchSource, compute_gps_selection, compute_selection

PARTS = ("selection", "gps_selection", "epoch")
TASKS = {"digits": ("mobilenetv2_100", "image"), "bbc": ("all-minilm-l6-v2", "text")}


class Task:
    """The loaded model, data, preprocessor and config every part runs on."""

    def __init__(self, data: str, tiny: bool, quick: bool, device: str, workdir: Path) -> None:
        model_name = "tiny-cnn" if tiny else TASKS[data][0]
        if data == "digits":
            per_class = 4 if tiny else 60 if quick else None
            uri = digits_image_folder(workdir, size=32, limit_per_class=per_class)
        else:
            per_class = 4 if tiny else 60 if quick else None
            uri = bbc_news_csv(workdir, limit_per_class=per_class)
            if tiny:
                model_name = "tiny-bert"
        self.train, _ = load_train_val(str(uri), None, val_fraction=0.1, seed=0)
        registry = ModelRegistry()
        self.base, spec = registry.load(model_name, num_labels=len(self.train.classes), seed=0)
        self.base.to(device)
        self.preprocessor = make_preprocessor(
            spec, image_size=16 if tiny else 32, max_length=16 if tiny else 64
        )
        self.config = GRFTConfig(
            method="grft",
            k=4,
            gps_per_row=1,
            epochs=1,
            batch_size=32,
            lr=3e-3,
            device=device,  # type: ignore[arg-type]
        )
        self.device = device
        self.source = BatchSource(
            self.train.items, self.train.labels, self.preprocessor, torch.device(device)
        )
        self.desc = {
            "model": model_name,
            "data": data,
            "train_items": len(self.train),
            "classes": len(self.train.classes),
            "selection_loss": self.config.selection_loss,
            "k": self.config.k,
            "batch_size": self.config.batch_size,
        }
        self._selection = compute_selection(copy.deepcopy(self.base), self.source, self.config)

    def run(self, part: str, model: nn.Module) -> float:
        """Run one part on ``model`` (a fresh copy) and return its seconds."""
        sync(self.device)
        start = time.perf_counter()
        if part == "selection":
            compute_selection(model, self.source, self.config)
        elif part == "gps_selection":
            compute_gps_selection(model, self.source, self.config.replace(method="gps"))
        elif part == "epoch":
            items, labels = self.train.items, self.train.labels
            result = fit(
                model, items, labels, items[:2], labels[:2], self.preprocessor, self.config,
                selection=self._selection, evaluate_initial=False,
            )  # fmt: skip
            sync(self.device)
            return result.history[0].seconds
        else:
            raise ValueError(f"unknown part {part!r} (choose from {', '.join(PARTS)})")
        sync(self.device)
        return time.perf_counter() - start


def measure_peak(part: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``--peak-only`` for one part in a fresh interpreter and return its JSON."""
    cmd = [sys.executable, "-m", "bench.selection_pass", "--part", part, "--peak-only", "--data", args.data]
    cmd += ["--threads", str(args.threads), "--device", args.device]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--quick"] if args.quick else []
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"peak run {part} failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def markdown(report: dict[str, Any]) -> str:
    """Times, peaks and ratios as markdown tables."""
    lines = [
        "| part | seconds, median | min–max | IQR | peak memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for part, r in report["parts"].items():
        t, peak = r["seconds"], r.get("peak_bytes")
        lines.append(
            f"| {part} | {t['median']:.3f} | {t['min']:.3f}–{t['max']:.3f} | {t['q1']:.3f}–{t['q3']:.3f} "
            f"| {mib(peak) if peak is not None else 'n/a'} |"
        )
    lines += [
        "",
        "| ratio (per round) | median | min–max | IQR | fastest / fastest |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, r in report["ratios"].items():
        lines.append(
            f"| {key} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {r['q1']:.3f}–{r['q3']:.3f} "
            f"| {r['ratio_of_min']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.selection_pass", description=__doc__.split("\n")[0])
    add_common_args(p, "selection_pass")
    p.add_argument("--data", choices=tuple(TASKS), default="digits")
    p.add_argument("--rounds", type=int, default=None, help="default 5 (3 --quick, 1 --tiny)")
    p.add_argument("--no-peak", action="store_true", help="skip the per-part peak-memory subprocesses")
    p.add_argument("--part", choices=PARTS, help="with --peak-only: the one part to run")
    p.add_argument("--peak-only", action="store_true", help="print one part's peak memory as JSON")
    args = p.parse_args(argv)
    if args.peak_only and args.part is None:
        p.error("--peak-only needs --part")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    setup_torch(args.threads)
    rounds = args.rounds or (1 if args.tiny else 3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="grft-selection-pass-") as work:
        task = Task(args.data, args.tiny, args.quick, args.device, Path(work))
        if args.peak_only:
            model = copy.deepcopy(task.base)
            gc.collect()
            probe = PeakProbe(args.device)
            task.run(args.part, model)
            print(json.dumps({"part": args.part, **probe.result()}))
            return None
        load_before = os.getloadavg()
        times: dict[str, list[float]] = {p: [] for p in PARTS}
        if not args.tiny:
            task.run("selection", copy.deepcopy(task.base))  # warm-up: first-call allocations and kernels
        for _ in range(rounds):
            for part in PARTS:
                model = copy.deepcopy(task.base)
                gc.collect()
                times[part].append(task.run(part, model))
                del model
    parts: dict[str, Any] = {p: {"seconds": summarize(v)} for p, v in times.items()}
    if not (args.no_peak or args.quick):
        for part in PARTS:
            peak = measure_peak(part, args)
            parts[part].update({k: v for k, v in peak.items() if k != "part"})
    report: dict[str, Any] = {
        "command": command_line("bench.selection_pass", argv),
        "machine": machine_info(args.device),
        "settings": {
            **task.desc,
            "rounds": rounds,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "parts": parts,
        "ratios": {
            "selection/epoch": ratio_summary(times["selection"], times["epoch"]),
            "gps_selection/epoch": ratio_summary(times["gps_selection"], times["epoch"]),
        },
    }
    write_report(report, args.json, markdown(report))
    return report


if __name__ == "__main__":
    main()
