"""The training loop shared by GRFT and its baselines.

Read it top to bottom: seed and device, selection (or its reload), "auto" hyperparameters (or their
reload), method set-up, optimizer and schedule, optional resume, then epochs of steps with divergence
recovery, evaluation, best-epoch tracking and checkpoints.

Epochs are numbered from 1 wherever they leave this module (``StepInfo``, ``EpochMetrics``, the history
and the best epoch); ``TrainState.epoch`` is a position (epochs completed), not a number.
Callbacks receive ``on_progress(PhaseProgress)`` during the phases that report no steps (selecting,
tuning, evaluating), ``on_selection``, ``on_autotune``, ``on_step``, ``on_epoch``, ``on_divergence`` and
``on_checkpoint``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from grft_core.method import autotune
from grft_core.method.batching import BatchSource
from grft_core.method.checkpoint import (
    TrainState,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    trainable_state,
)
from grft_core.method.config import GRFTConfig
from grft_core.method.divergence import DivergenceGuard
from grft_core.method.evaluation import evaluate
from grft_core.method.model import count_parameters, freeze_norm_stats
from grft_core.method.selection import Selection
from grft_core.method.setup import (
    SELECTION_METHODS,
    compute_gps_selection,
    compute_selection,
    prepare,
    uses_frozen_norms,
)
from grft_core.method.steps import (
    LossFn,
    build_optimizer,
    classification_loss,
    lr_factor,
    make_scheduler,
    steps_per_epoch,
    use_bf16,
)

__all__ = [
    "EpochMetrics",
    "PhaseProgress",
    "StepInfo",
    "TrainResult",
    "fit",
    "lr_factor",
    "phase_reporter",
    "resolve_device",
]

#: The file in a checkpoint folder that keeps the "auto" choices, so a resumed run does not search again.
AUTOTUNE_FILE = "autotune.json"


@dataclass
class StepInfo:
    """Progress after one optimizer step (``epoch`` counts from 1)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    samples_per_s: float
    eta_s: float
    accuracy: float | None = None


@dataclass
class EpochMetrics:
    """One epoch's summary (``epoch`` counts from 1; ``step`` is the optimizer step it ended on)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float
    step: int = 0
    train_accuracy: float | None = None


@dataclass
class PhaseProgress:
    """How far a phase without optimizer steps is: ``done`` of ``total`` units (batches, trial steps).

    ``phase`` is ``selecting``, ``tuning`` or ``evaluating``; ``eta_s`` is the phase's remaining time
    at its pace so far (None before the first unit).
    """

    phase: str
    done: int
    total: int
    eta_s: float | None


@dataclass
class TrainResult:
    """What a finished run reports (``best_epoch`` counts from 1; 0 when no epoch ran).

    ``config`` is the configuration the run trained with: the given one with any "auto" values
    replaced by the chosen ones, which ``autotune`` explains.
    """

    history: list[EpochMetrics]
    best_epoch: int
    best_val_accuracy: float
    initial_val_accuracy: float
    trainable_params: int
    total_params: int
    steps: int
    wall_time_s: float
    selection: Selection | None = None
    losses: list[float] = field(default_factory=list)
    config: GRFTConfig | None = None
    autotune: dict[str, Any] | None = None
    divergences: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(config: GRFTConfig) -> torch.device:
    """``auto`` picks CUDA when present; CUDA is initialised only here, never on import."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def phase_reporter(callbacks: Sequence[Any], phase: str) -> Callable[[int, int], None]:
    """A ``(done, total)`` callable that sends ``on_progress(PhaseProgress)`` with an ETA at the
    phase's pace so far."""
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (total - done) if done > 0 else None
        _emit(callbacks, "on_progress", PhaseProgress(phase, done, total, eta))

    report(0, 0)  # the phase has begun; its size is not known until the first unit
    return report


def fit(
    model: nn.Module,
    train_items: Sequence[Any],
    train_labels: Sequence[int],
    val_items: Sequence[Any],
    val_labels: Sequence[int],
    preprocessor: Any,
    config: GRFTConfig,
    *,
    callbacks: Sequence[Any] = (),
    checkpoint_dir: Path | None = None,
    selection: Selection | None = None,
    evaluate_initial: bool = True,
    loss_fn: LossFn = classification_loss,
) -> TrainResult:
    """Train ``model`` in place with ``config.method`` and return the run's metrics.

    Args:
        model: a classifier (``features``, ``head``); it is wrapped/frozen as the method needs.
        train_items, train_labels: training inputs and class indices.
        val_items, val_labels: validation inputs and class indices (evaluated each epoch).
        preprocessor: the model's preprocessing.
        config: the run's config; names in ``config.auto`` are chosen by ``grft_core.method.autotune``.
        callbacks: objects with any of the hooks listed in the module docstring.
        checkpoint_dir: where checkpoints go; if it holds one, the run resumes from the newest.
        selection: reuse this selection instead of running the selection pass.
        evaluate_initial: measure validation accuracy before training (reported, not trained on).
        loss_fn: the training loss of a batch (default: cross-entropy of a classifier).
    Returns:
        history, best epoch, parameter counts, timing and the config trained with. The model ends with
        its best epoch's weights.
    Raises:
        TrainingInterrupted: a callback stopped the run (the last checkpoint stays on disk).
        TrainingDiverged: the loss diverged again after every learning-rate halving.
        ConfigError: k exceeds every matrix, or similar configuration errors.
    """
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    device = resolve_device(config)
    if device.type == "cpu":
        # Denormals appear as Adam's second moments decay and slow x86 float math by orders of magnitude.
        torch.set_flush_denormal(True)
    model.to(device)
    train = BatchSource(train_items, train_labels, preprocessor, device)
    val = BatchSource(val_items, val_labels, preprocessor, device)
    initial_acc = _evaluate(model, val, config, callbacks)[0] if evaluate_initial else float("nan")

    if config.method in SELECTION_METHODS and selection is None:
        selection, fresh = _load_or_select(model, train, config, checkpoint_dir, callbacks)
        if fresh:
            _emit(callbacks, "on_selection", selection)
    tuning = None
    if config.auto:
        config, tuning = _load_or_tune(
            model, train, val, selection, config, checkpoint_dir, callbacks, loss_fn
        )
    prepared = prepare(model, config, selection)
    head_init_file = checkpoint_dir / "head_init.safetensors" if checkpoint_dir else None
    if head_init_file is not None and head_init_file.exists():
        prepared.head_init.update(load_file(str(head_init_file), device=str(device)))
    elif head_init_file is not None:
        head_init_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.cpu().contiguous() for k, v in prepared.head_init.items()}, str(head_init_file))

    optimizer = build_optimizer(model, config)
    batches_per_epoch = train.num_batches(config.batch_size)
    total_steps = steps_per_epoch(len(train), config) * config.epochs
    scheduler = make_scheduler(optimizer, total_steps, config)

    # best["epoch"] 0: no epoch has finished yet.
    state = TrainState(0, 0, 0, [], {"epoch": 0, "val_accuracy": -1.0}, {})
    best_tensors: dict[str, Tensor] | None = None
    found = list_checkpoints(checkpoint_dir) if checkpoint_dir else []
    if found:
        state, best_tensors = load_checkpoint(found[-1], model, optimizer)
        scheduler.load_state_dict(state.scheduler)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16(config, device))
    trainable = [p for p in model.parameters() if p.requires_grad]
    guard = DivergenceGuard()
    guard.keep(state.step, model, optimizer, force=True)
    divergences: list[dict[str, Any]] = []
    losses: list[float] = []
    for position in range(state.epoch, config.epochs):
        epoch = position + 1
        epoch_start, seen_loss, seen, seen_correct = time.perf_counter(), 0.0, 0, 0
        step_correct, step_count, measured, step_finite = 0, 0, True, True
        model.train()
        if uses_frozen_norms(config):
            freeze_norm_stats(model)
        start_batch = state.batch_in_epoch if position == state.epoch else 0
        tick = time.perf_counter()
        for b, (inputs, labels) in enumerate(
            train.epoch(config.batch_size, config.seed, position, start_batch), start_batch
        ):
            with autocast:
                batch = loss_fn(model, inputs, labels)
            loss = batch.loss
            total = loss
            if prepared.regularizer is not None and config.l2_lambda > 0:
                total = loss + config.l2_lambda * prepared.regularizer()
            (total / config.grad_accum_steps).backward()  # type: ignore[no-untyped-call]
            loss_value = float(loss.detach())
            # A batch of an accumulated step that went non-finite poisons the whole step's gradient.
            step_finite = step_finite and math.isfinite(loss_value)
            seen_loss += loss_value * batch.count
            seen += batch.count
            if batch.correct is None:
                measured = False
            else:
                step_correct += batch.correct
                seen_correct += batch.correct
            step_count += batch.count
            if (b + 1) % config.grad_accum_steps and b + 1 < batches_per_epoch:
                continue
            reason = guard.check(loss_value if step_finite else math.nan)
            step_finite = True
            if reason is not None:
                # The update this loss would make is never applied: back to the last good state.
                event = guard.roll_back(state.step, reason, model, optimizer, scheduler)
                divergences.append(event.__dict__)
                _emit(callbacks, "on_divergence", event)
                step_correct, step_count, tick = 0, 0, time.perf_counter()
                continue
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            guard.keep(state.step, model, optimizer)
            losses.append(float(total.detach()))
            elapsed = time.perf_counter() - tick
            info = StepInfo(
                step=state.step,
                total_steps=total_steps,
                epoch=epoch,
                loss=loss_value,
                lr=float(scheduler.get_last_lr()[0]),
                samples_per_s=step_count / max(elapsed, 1e-9),
                eta_s=elapsed * (total_steps - state.step),
                accuracy=step_correct / step_count if measured and step_count else None,
            )
            step_correct, step_count = 0, 0
            state.epoch, state.batch_in_epoch = position, b + 1
            _emit(callbacks, "on_step", info)
            if checkpoint_dir and config.checkpoint_every and state.step % config.checkpoint_every == 0:
                _checkpoint(checkpoint_dir, model, optimizer, scheduler, state, best_tensors, callbacks)
            tick = time.perf_counter()

        val_acc, val_loss = _evaluate(model, val, config, callbacks)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=seen_loss / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=val_acc,
            seconds=time.perf_counter() - epoch_start,
            step=state.step,
            train_accuracy=seen_correct / seen if measured and seen else None,
        )
        state.history.append(metrics.__dict__)
        if val_acc > state.best["val_accuracy"]:
            state.best = {"epoch": epoch, "val_accuracy": val_acc}
            best_tensors = trainable_state(model)
        state.epoch, state.batch_in_epoch = position + 1, 0
        _emit(callbacks, "on_epoch", metrics)
        if checkpoint_dir:
            _checkpoint(checkpoint_dir, model, optimizer, scheduler, state, best_tensors, callbacks)

    if best_tensors is not None:
        _restore(model, best_tensors)
    trainable_count, total_count = count_parameters(model)
    return TrainResult(
        history=[EpochMetrics(**h) for h in state.history],
        best_epoch=int(state.best["epoch"]),
        best_val_accuracy=float(state.best["val_accuracy"]),
        initial_val_accuracy=initial_acc,
        trainable_params=trainable_count,
        total_params=total_count,
        steps=state.step,
        wall_time_s=time.perf_counter() - started,
        selection=selection,
        losses=losses,
        config=config,
        autotune=tuning,
        divergences=divergences,
    )


def _evaluate(
    model: nn.Module, val: BatchSource, config: GRFTConfig, callbacks: Sequence[Any]
) -> tuple[float, float]:
    return evaluate(model, val, config.batch_size, on_batch=phase_reporter(callbacks, "evaluating"))


def _load_or_select(
    model: nn.Module, train: BatchSource, config: GRFTConfig, ckpt: Path | None, callbacks: Sequence[Any]
) -> tuple[Selection, bool]:
    """The checkpointed selection when resuming (``fresh=False``), else a new selection pass."""
    folder = ckpt / "selection" if ckpt else None
    if folder is not None and (folder / "selection.json").exists():
        return Selection.load(folder), False
    report = phase_reporter(callbacks, "selecting")
    if config.method == "gps":
        selection = compute_gps_selection(model, train, config, on_progress=report)
    else:
        selection = compute_selection(model, train, config, on_progress=report)
    if folder is not None:
        selection.save(folder)
    return selection, True


def _load_or_tune(
    model: nn.Module,
    train: BatchSource,
    val: BatchSource,
    selection: Selection | None,
    config: GRFTConfig,
    ckpt: Path | None,
    callbacks: Sequence[Any],
    loss_fn: LossFn,
) -> tuple[GRFTConfig, dict[str, Any]]:
    """The "auto" choices a checkpoint kept when resuming, else a new search (``autotune.resolve``)."""
    saved = ckpt / AUTOTUNE_FILE if ckpt else None
    if saved is not None and saved.exists():
        record: dict[str, Any] = json.loads(saved.read_text())
        return autotune.apply_choices(config, record["chosen"]), record
    tuned, record = autotune.resolve(
        model,
        train,
        val,
        selection,
        config,
        callbacks=callbacks,
        on_progress=phase_reporter(callbacks, "tuning"),
        loss_fn=loss_fn,
    )
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(record, indent=1))
    return tuned, record


def _checkpoint(
    root: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    best: dict[str, Tensor] | None,
    callbacks: Sequence[Any],
) -> None:
    state.scheduler = scheduler.state_dict()
    path = save_checkpoint(root, model, optimizer, state, best)
    _emit(callbacks, "on_checkpoint", state.step, path)


def _restore(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def _emit(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)
