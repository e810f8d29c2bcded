"""Report of ``bench.lm_accuracy``: per-seed accuracies, seed statistics and paired tests vs GRFT rows.

Every trained run is paired with the ``grft_rows`` run of the same task and seed (same training items,
same batch order, same test items); the difference ``grft_rows - method`` is positive where GRFT rows
scored higher. The base has one score per task and pairs with every seed. The pooled (task, seed)
differences of a method get an exact two-sided sign-flip permutation p-value: with n pairs it can not go
below 2 / 2^n (0.25 for 3), which the table shows so a reader does not mistake "no pair disagrees" for
evidence.
"""

from __future__ import annotations

from typing import Any

from bench.stats import MAX_EXACT_PAIRS, mean_std, paired_permutation_p

REFERENCE = "grft_rows"


def _by_method(runs: list[dict[str, Any]]) -> dict[str, dict[int | None, dict[str, Any]]]:
    out: dict[str, dict[int | None, dict[str, Any]]] = {}
    for r in runs:
        out.setdefault(r["method"], {})[r.get("seed")] = r
    return out


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Per task x method seed statistics and, per method, the pooled paired comparison with GRFT rows."""
    tasks: dict[str, Any] = {}
    pairs: dict[str, list[dict[str, Any]]] = {}
    for task, entry in report["tasks"].items():
        methods = _by_method(entry["runs"])
        ref = methods.get(REFERENCE, {})
        rows: dict[str, Any] = {}
        for method, by_seed in methods.items():
            seeds = sorted(by_seed, key=lambda s: -1 if s is None else s)
            accs = [by_seed[s]["test_accuracy"] for s in seeds]
            mean, std = mean_std(accs)
            first = by_seed[seeds[0]]
            row: dict[str, Any] = {
                "seeds": seeds,
                "accuracy": accs,
                "mean": mean,
                "std": std,
                "trainable_params": first["trainable_params"],
                "adapter_bytes": first["adapter_bytes"],
            }
            if method != REFERENCE and ref:
                found = []
                for seed, ref_run in sorted(ref.items(), key=lambda kv: kv[0] or 0):
                    other = by_seed.get(None if method == "base" else seed)
                    if other is None:
                        continue
                    diff = ref_run["test_accuracy"] - other["test_accuracy"]
                    found.append({"task": task, "seed": seed, "diff": diff})
                pairs.setdefault(method, []).extend(found)
                row["grft_rows_minus_method"] = [d["diff"] for d in found]
                row["mean_diff"] = mean_std([d["diff"] for d in found])[0] if found else None
            rows[method] = row
        tasks[task] = rows
    pooled: dict[str, Any] = {}
    for method, found in pairs.items():
        diffs = [d["diff"] for d in found]
        n = len(diffs)
        pooled[method] = {
            "pairs": found,
            "n": n,
            "mean_diff": mean_std(diffs)[0] if diffs else None,
            "p_value": paired_permutation_p(diffs) if 0 < n <= MAX_EXACT_PAIRS else None,
            "smallest_possible_p": min(1.0, 2 / 2**n) if n else None,
        }
    return {"reference": REFERENCE, "difference": f"{REFERENCE} - method", "tasks": tasks, "pooled": pooled}


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def seed_table(summary: dict[str, Any], seeds: list[int]) -> str:
    """Markdown: accuracy per seed and mean ± std (sample std over seeds), per task and method."""
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = [
        f"| task | method | {head} | mean ± std | trainable | adapter bytes |",
        "|---|---|" + "---|" * len(seeds) + "---|---|---|",
    ]
    for task, rows in summary["tasks"].items():
        for method, row in rows.items():
            by_seed = dict(zip(row["seeds"], row["accuracy"], strict=True))
            if row["seeds"] == [None]:  # the base: one score, no seed
                cells = ["—"] * len(seeds)
                stat = f"{row['mean']:.3f} (no seed)"
            else:
                cells = [f"{by_seed[s]:.3f}" if s in by_seed else "—" for s in seeds]
                stat = f"{row['mean']:.3f} ± {row['std']:.3f}"
            lines.append(
                f"| {task} | {method} | {' | '.join(cells)} | {stat} | "
                f"{row['trainable_params']:,} | {row['adapter_bytes']:,} |"
            )
    return "\n".join(lines)


def comparison_table(summary: dict[str, Any]) -> str:
    """Markdown: per method, the paired differences with GRFT rows (points), their mean and p."""
    lines = [
        "| method | pairs (task, seed) | grft_rows − method per pair (points) | mean (points) "
        "| p (exact sign-flip, two-sided) | smallest possible p |",
        "|---|---|---|---|---|---|",
    ]
    for method, c in summary["pooled"].items():
        per = ", ".join(f"{d['task']}/{d['seed']}: {_pts(d['diff'])}" for d in c["pairs"]) or "—"
        mean = _pts(c["mean_diff"]) if c["mean_diff"] is not None else "—"
        p = f"{c['p_value']:.3f}" if c["p_value"] is not None else "—"
        low = f"{c['smallest_possible_p']:.3f}" if c["smallest_possible_p"] is not None else "—"
        lines.append(f"| {method} | {c['n']} | {per} | {mean} | {p} | {low} |")
    return "\n".join(lines)


def run_table(report: dict[str, Any]) -> str:
    """Markdown: one row per run (task, method, seed) with its cost figures."""
    lines = [
        "| task | method | seed | test acc | trainable | trainable % | adapter bytes | step s (median) "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, entry in report["tasks"].items():
        for r in entry["runs"]:
            step = f"{r['step_seconds_median']:.2f}" if "step_seconds_median" in r else "—"
            peak = f"{r['peak_rss_bytes'] / 2**20:,.0f}" if "peak_rss_bytes" in r else "—"
            seed = "—" if r.get("seed") is None else str(r["seed"])
            lines.append(
                f"| {task} | {r['method']} | {seed} | {r['test_accuracy']:.3f} | {r['trainable_params']:,} | "
                f"{r['trainable_pct']:.3f} | {r['adapter_bytes']:,} | {step} | {peak} |"
            )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The whole markdown report: seed table, paired comparisons with GRFT rows, and every run."""
    summary = summarize(report)
    tests = ", ".join(f"{t} {e['test_items']}" for t, e in report["tasks"].items())
    parts = [
        f"Mode {report['mode']}, seeds {', '.join(map(str, report['seeds']))}; "
        f"test items (fixed across seeds): {tests}.",
        "",
        "### Test accuracy per seed",
        "",
        seed_table(summary, list(report["seeds"])),
    ]
    if summary["pooled"]:
        parts += [
            "",
            f"### {REFERENCE} − method, paired by task and seed",
            "",
            comparison_table(summary),
        ]
    parts += ["", "### Every run", "", run_table(report)]
    return "\n".join(parts)
