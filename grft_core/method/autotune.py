"""Choosing "auto" hyperparameters: batch size and epochs from the data, the learning rate by a short search.

``resolve`` is what the trainer calls when ``config.auto`` names any of ``lr``, ``epochs`` and
``batch_size`` (OpenAI's ``"auto"``: the service picks). In that order:

- ``batch_size``: about one fiftieth of the training examples, a power of two from 8 to 64 (never more
  than the examples); on CUDA a trial that runs out of memory halves it.
- ``epochs``: 3, more for small sets so that training sees about 2,000 examples (at most 20 epochs), fewer
  for large ones so that it sees at most about 50,000 (at least 1).
- ``lr``: successive halving over five rates spaced evenly in log scale, a decade either side of the
  method's usual rate (``LR_CENTER``). Every candidate trains a copy of the model for a few steps from
  the same start with the same batches, and is scored by its loss on (at most ``EVAL_ITEMS`` of) the
  validation split; the better half trains again for twice as long, until two remain and the best of
  them wins. A candidate whose loss stops being finite is out. The whole search takes at most
  ``BUDGET_SHARE`` of the training's optimizer steps: ``plan`` sizes the rungs to fit, and the count is
  checked as the search runs.

The search is deterministic under the run's seed (the torch RNG is saved before and restored after, so
the training that follows draws the same numbers as without it) and asks ``check_stop`` every step.
``resolve`` returns the config to train with and a JSON-ready record of what was tried, chosen and why.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from grft_core.cancel import check_stop
from grft_core.errors import ConfigError
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.model import freeze_norm_stats
from grft_core.method.selection import Selection
from grft_core.method.setup import prepare, uses_frozen_norms
from grft_core.method.steps import (
    LossFn,
    build_optimizer,
    classification_loss,
    make_scheduler,
    steps_per_epoch,
    use_bf16,
)

#: The usual learning rate of each method, the centre of the search grid. Full fine-tuning moves every
#: weight, so it wants a tenth of what the sparse methods use; a lone linear head tolerates ten times more.
LR_CENTER = {
    "grft": 1e-3,
    "masked_dense": 1e-3,
    "gps": 1e-3,
    "lora": 1e-3,
    "full": 1e-4,
    "linear_probe": 1e-2,
}
#: Five rates, a decade either side of the centre, evenly spaced in log scale.
GRID = tuple(10 ** (e / 2) for e in (-2, -1, 0, 1, 2))
#: Candidates trained in each rung; each rung trains twice as long as the one before.
RUNGS = (5, 3, 2)
#: The search's share of the training budget, counted in optimizer steps.
BUDGET_SHARE = 0.3
#: The first rung trains at most this many steps per candidate: enough to tell a rate that learns from
#: one that diverges, while a large dataset does not make the search long.
MAX_FIRST_RUNG_STEPS = 50
#: Validation items each candidate is scored on (a fixed, seeded subset of the split).
EVAL_ITEMS = 512
#: A first rung shorter than this cannot rank rates: after one step the largest rate has simply moved
#: furthest (it picked 1e-2 for LoRA on a 100-item text set, which then trained to chance).
MIN_FIRST_RUNG_STEPS = 2
#: Examples seen in training under auto epochs: small sets get more passes, large ones fewer.
MIN_SEEN, MAX_SEEN, DEFAULT_EPOCHS, MAX_AUTO_EPOCHS = 2_000, 50_000, 3, 20


@dataclass
class Rung:
    """One round of the search: how many candidates train, and for how many steps each."""

    candidates: int
    steps: int


def auto_batch_size(items: int) -> int:
    """About ``items / 50``, as a power of two from 8 to 64, and never more than ``items``."""
    target = max(1.0, items / 50)
    size = int(2 ** round(math.log2(target)))
    return max(1, min(items, min(64, max(8, size))))


def auto_epochs(items: int) -> int:
    """3 passes, or enough to see about 2,000 examples on a small set (at most 20), or at most about
    50,000 on a large one (at least 1)."""
    if items * DEFAULT_EPOCHS < MIN_SEEN:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_SEEN / max(items, 1)))
    if items * DEFAULT_EPOCHS > MAX_SEEN:
        return max(1, MAX_SEEN // items)
    return DEFAULT_EPOCHS


def lr_grid(method: str) -> list[float]:
    """The candidate learning rates of ``method``, lowest first."""
    center = LR_CENTER.get(method, 1e-3)
    return [float(f"{center * f:.3g}") for f in GRID]


def plan(candidates: int, budget: int, epoch_steps: int) -> list[Rung]:
    """The rungs of a search over ``candidates`` rates that takes at most ``budget`` optimizer steps.

    Rung ``i`` trains ``RUNGS[i]`` candidates for ``s * 2**i`` steps; ``s`` is the largest that fits,
    capped at ``MAX_FIRST_RUNG_STEPS`` and at half an epoch. Rungs are dropped from the end while even
    ``s = MIN_FIRST_RUNG_STEPS`` does not fit; an empty plan means the budget is too small for any search.
    """
    sizes = [min(candidates, n) for n in RUNGS]
    while sizes:
        cost_per_s = sum(n * 2**i for i, n in enumerate(sizes))
        s = min(budget // cost_per_s, MAX_FIRST_RUNG_STEPS, max(MIN_FIRST_RUNG_STEPS, epoch_steps // 2))
        if s >= MIN_FIRST_RUNG_STEPS:
            return [Rung(n, s * 2**i) for i, n in enumerate(sizes)]
        sizes.pop()
    return []


def apply_choices(config: GRFTConfig, chosen: dict[str, Any]) -> GRFTConfig:
    """``config`` with the chosen values in place and nothing left on auto."""
    return config.replace(**chosen, auto=[])


def resolve(
    model: nn.Module,
    train: BatchSource,
    val: BatchSource,
    selection: Selection | None,
    config: GRFTConfig,
    *,
    callbacks: Sequence[Any] = (),
    on_progress: Callable[[int, int], None] | None = None,
    loss_fn: LossFn = classification_loss,
) -> tuple[GRFTConfig, dict[str, Any]]:
    """Choose the hyperparameters that ``config.auto`` names and say how.

    Args:
        model: the model before ``prepare`` (copies of it train during the search; it is left as it was).
        train, val: the encoded training and validation data.
        selection: the run's selection, for the methods that need one.
        config: the run's config; its values for the auto names are ignored.
        callbacks: receive ``on_autotune(record)`` once the choice is made.
        on_progress: called with ``(trial steps done, trial steps planned)`` during the search.
        loss_fn: the training loss of a batch (the search's score uses it too).
    Returns:
        the config to train with (``auto`` empty) and the record: ``chosen``, ``reasons``, ``trials``
        (rate, rung, steps, validation loss), ``budget_steps``, ``used_steps`` and ``seconds`` (wall
        time of the search).
    Raises:
        TrainingInterrupted: a stop was asked during the search.
    """
    started = time.perf_counter()
    auto = set(config.auto)
    chosen: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    n = len(train)
    if "batch_size" in auto:
        chosen["batch_size"] = auto_batch_size(n)
        reasons["batch_size"] = f"about 1/50 of the {n} training examples, a power of two from 8 to 64"
    if "epochs" in auto:
        chosen["epochs"] = auto_epochs(n)
        reasons["epochs"] = (
            f"{n} training examples: 3 passes, more on small sets (about {MIN_SEEN:,} examples seen, at most "
            f"{MAX_AUTO_EPOCHS} epochs), fewer on large ones (about {MAX_SEEN:,} at most)"
        )
    record: dict[str, Any] = {"auto": sorted(auto), "chosen": chosen, "reasons": reasons, "trials": []}
    record["budget_steps"] = record["used_steps"] = 0
    if "lr" in auto:
        searched = apply_choices(config, chosen)
        lr, batch_size = _search_lr(
            model, train, val, selection, searched, record, on_progress, loss_fn, "batch_size" in auto
        )
        chosen["lr"] = lr
        if batch_size != searched.batch_size:  # a CUDA out-of-memory halved it during the search
            chosen["batch_size"] = batch_size
            reasons["batch_size"] = reasons.get("batch_size", "the given size") + ", halved to fit in memory"
    record["seconds"] = round(time.perf_counter() - started, 3)
    for cb in callbacks:
        hook = getattr(cb, "on_autotune", None)
        if hook is not None:
            hook(record)
    return apply_choices(config, chosen), record


def _search_lr(
    model: nn.Module,
    train: BatchSource,
    val: BatchSource,
    selection: Selection | None,
    config: GRFTConfig,
    record: dict[str, Any],
    on_progress: Callable[[int, int], None] | None,
    loss_fn: LossFn,
    can_shrink: bool,
) -> tuple[float, int]:
    """Successive halving over ``lr_grid``; returns the chosen rate and the batch size that fit."""
    grid = lr_grid(config.method)
    epoch_steps = steps_per_epoch(n, config) if (n := len(train)) else 1
    budget = int(BUDGET_SHARE * epoch_steps * config.epochs)
    rungs = plan(len(grid), budget, epoch_steps)
    record["budget_steps"] = budget
    center = grid[len(grid) // 2]
    if not rungs:
        record["reasons"]["lr"] = (
            f"the method's usual rate: {budget} optimizer steps (30% of training) are too few to search"
        )
        return center, config.batch_size
    planned = sum(r.candidates * r.steps for r in rungs)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if done > budget:  # plan() keeps within the budget; this guards the plan itself
            raise ConfigError(f"the learning-rate search overran its {budget}-step budget", param="lr")
        if on_progress is not None:
            on_progress(done, planned)

    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # type: ignore[no-untyped-call]
    scores = _scorer(val, config.seed, loss_fn)
    alive = list(grid)
    batch_size = config.batch_size
    try:
        for index, rung in enumerate(rungs):
            results: list[tuple[float, float]] = []
            for lr in alive[: rung.candidates]:
                trial = config.replace(lr=lr, batch_size=batch_size, auto=[])
                loss, batch_size = _trial(
                    model, train, selection, trial, rung.steps, tick, scores, loss_fn, can_shrink
                )
                record["trials"].append(
                    {"lr": lr, "rung": index + 1, "steps": rung.steps, "valid_loss": loss}
                )
                results.append((loss, lr))
            # Lowest loss first; a diverged candidate (inf) last; ties go to the smaller, safer rate.
            results.sort(key=lambda r: (r[0] if math.isfinite(r[0]) else math.inf, r[1]))
            alive = [lr for _, lr in results]
    finally:
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    record["used_steps"] = done
    best_loss, best = min(
        ((t["valid_loss"], t["lr"]) for t in record["trials"] if t["rung"] == len(rungs)),
        key=lambda r: (r[0] if math.isfinite(r[0]) else math.inf, r[1]),
    )
    if not math.isfinite(best_loss):
        record["reasons"]["lr"] = f"every candidate diverged; the lowest rate of the grid, {grid[0]:g}"
        return grid[0], batch_size
    tried = ", ".join(f"{lr:g}" for lr in grid)
    record["reasons"]["lr"] = (
        f"lowest validation loss ({best_loss:.4g}) among {tried} after successive halving in "
        f"{len(rungs)} rungs ({done} of {budget} allowed optimizer steps)"
    )
    return best, batch_size


def _scorer(val: BatchSource, seed: int, loss_fn: LossFn) -> Callable[[nn.Module], float]:
    """Mean loss of a model on a fixed, seeded subset of at most ``EVAL_ITEMS`` validation items."""
    g = torch.Generator().manual_seed(seed + 4099)
    subset = torch.randperm(len(val), generator=g)[:EVAL_ITEMS]

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        if len(subset) == 0:
            return math.nan
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(subset), 64):
            inputs, labels = val.batch(subset[start : start + 64])
            batch = loss_fn(model, inputs, labels)
            total += float(batch.loss) * batch.count
            count += batch.count
        return total / max(count, 1)

    return score


def _batches(train: BatchSource, batch_size: int, seed: int) -> Iterator[tuple[Any, Tensor]]:
    """Training batches in the run's own epoch order, for as many epochs as a trial needs."""
    position = 0
    while True:
        yield from train.epoch(batch_size, seed, position)
        position += 1


def _trial(
    model: nn.Module,
    train: BatchSource,
    selection: Selection | None,
    config: GRFTConfig,
    steps: int,
    tick: Callable[[], None],
    score: Callable[[nn.Module], float],
    loss_fn: LossFn,
    can_shrink: bool,
) -> tuple[float, int]:
    """Train a copy of ``model`` for ``steps`` optimizer steps at ``config.lr``; its validation loss
    (inf once its training loss is not finite) and the batch size it ran with (halved on a CUDA
    out-of-memory error when ``can_shrink``)."""
    torch.manual_seed(config.seed)  # every candidate starts from the same draws
    copy_ = copy.deepcopy(model)
    try:
        prepared = prepare(copy_, config, selection)
        optimizer = build_optimizer(copy_, config)
        scheduler = make_scheduler(optimizer, steps, config)
        device = next(copy_.parameters()).device
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16(config, device))
        trainable = [p for p in copy_.parameters() if p.requires_grad]
        copy_.train()
        if uses_frozen_norms(config):
            freeze_norm_stats(copy_)
        batches = _batches(train, config.batch_size, config.seed)
        for _ in range(steps):
            check_stop()
            for _ in range(config.grad_accum_steps):
                inputs, labels = next(batches)
                with autocast:
                    loss = loss_fn(copy_, inputs, labels).loss
                total = loss
                if prepared.regularizer is not None and config.l2_lambda > 0:
                    total = loss + config.l2_lambda * prepared.regularizer()
                (total / config.grad_accum_steps).backward()  # type: ignore[no-untyped-call]
            tick()
            if not math.isfinite(float(loss.detach())):
                return math.inf, config.batch_size
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        result = score(copy_)
        return (result if math.isfinite(result) else math.inf), config.batch_size
    except torch.OutOfMemoryError:
        if not can_shrink or config.batch_size <= 1:
            raise
        del copy_
        torch.cuda.empty_cache()
        smaller = config.replace(batch_size=config.batch_size // 2)
        return _trial(model, train, selection, smaller, steps, tick, score, loss_fn, can_shrink)
