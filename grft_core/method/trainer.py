"""The training loop shared by GRFT and its baselines.

Read it top to bottom: seed and device, selection (or its reload), method set-up, optimizer and
schedule, optional resume, then epochs of steps with evaluation, best-epoch tracking and checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from grft_core.method.batching import BatchSource
from grft_core.method.checkpoint import (
    TrainState,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    trainable_state,
)
from grft_core.method.config import GRFTConfig
from grft_core.method.evaluation import evaluate
from grft_core.method.model import HEAD, count_parameters, freeze_norm_stats
from grft_core.method.selection import Selection
from grft_core.method.setup import (
    SELECTION_METHODS,
    compute_gps_selection,
    compute_selection,
    prepare,
    uses_frozen_norms,
)


@dataclass
class StepInfo:
    """Progress after one optimizer step."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    samples_per_s: float
    eta_s: float


@dataclass
class EpochMetrics:
    """One epoch's summary."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    """What a finished run reports."""

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


def resolve_device(config: GRFTConfig) -> torch.device:
    """``auto`` picks CUDA when present; CUDA is initialised only here, never on import."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``.

    Warm-up keeps Adam's first steps, whose second-moment estimate is still noisy, from throwing the
    freshly initialised head (and the deltas it drives) far from the pre-trained solution.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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
) -> TrainResult:
    """Train ``model`` in place with ``config.method`` and return the run's metrics.

    Args:
        model: a classifier (``features``, ``head``); it is wrapped/frozen as the method needs.
        train_items, train_labels: training inputs and class indices.
        val_items, val_labels: validation inputs and class indices (evaluated each epoch).
        preprocessor: the model's preprocessing.
        config: the run's config.
        callbacks: objects with any of ``on_selection/on_step/on_epoch/on_checkpoint``.
        checkpoint_dir: where checkpoints go; if it holds one, the run resumes from the newest.
        selection: reuse this selection instead of running the selection pass.
        evaluate_initial: measure validation accuracy before training (reported, not trained on).
    Returns:
        history, best epoch, parameter counts and timing. The model ends with its best epoch's weights.
    Raises:
        TrainingInterrupted: a callback stopped the run (the last checkpoint stays on disk).
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
    initial_acc = evaluate(model, val, config.batch_size)[0] if evaluate_initial else float("nan")

    if config.method in SELECTION_METHODS and selection is None:
        selection, fresh = _load_or_select(model, train, config, checkpoint_dir)
        if fresh:
            _emit(callbacks, "on_selection", selection)
    prepared = prepare(model, config, selection)
    head_init_file = checkpoint_dir / "head_init.safetensors" if checkpoint_dir else None
    if head_init_file is not None and head_init_file.exists():
        prepared.head_init.update(load_file(str(head_init_file), device=str(device)))
    elif head_init_file is not None:
        head_init_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.cpu().contiguous() for k, v in prepared.head_init.items()}, str(head_init_file))

    head_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(HEAD + ".")]
    body_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(HEAD + ".")]
    groups = [{"params": body_params, "lr": config.lr}] if body_params else []
    groups.append({"params": head_params, "lr": config.head_lr or config.lr})
    # L2 lives in the loss (the paper's formulation), so Adam has no weight decay.
    optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=0.0)
    batches_per_epoch = train.num_batches(config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum_steps)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup))

    state = TrainState(0, 0, 0, [], {"epoch": -1, "val_accuracy": -1.0}, {})
    best_tensors: dict[str, Tensor] | None = None
    found = list_checkpoints(checkpoint_dir) if checkpoint_dir else []
    if found:
        state, best_tensors = load_checkpoint(found[-1], model, optimizer)
        scheduler.load_state_dict(state.scheduler)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=_use_bf16(config, device))
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    for epoch in range(state.epoch, config.epochs):
        epoch_start, seen_loss, seen = time.perf_counter(), 0.0, 0
        model.train()
        if uses_frozen_norms(config):
            freeze_norm_stats(model)
        start_batch = state.batch_in_epoch if epoch == state.epoch else 0
        for b, (inputs, labels) in enumerate(
            train.epoch(config.batch_size, config.seed, epoch, start_batch), start_batch
        ):
            tick = time.perf_counter()
            with autocast:
                logits = model(inputs)
                loss = nn.functional.cross_entropy(logits.float(), labels)
            total = loss
            if prepared.regularizer is not None and config.l2_lambda > 0:
                total = loss + config.l2_lambda * prepared.regularizer()
            (total / config.grad_accum_steps).backward()  # type: ignore[no-untyped-call]
            seen_loss += float(loss.detach()) * len(labels)
            seen += len(labels)
            if (b + 1) % config.grad_accum_steps and b + 1 < batches_per_epoch:
                continue
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            losses.append(float(total.detach()))
            elapsed = time.perf_counter() - tick
            info = StepInfo(
                step=state.step,
                total_steps=total_steps,
                epoch=epoch,
                loss=float(loss.detach()),
                lr=float(scheduler.get_last_lr()[0]),
                samples_per_s=len(labels) / max(elapsed, 1e-9),
                eta_s=elapsed * (total_steps - state.step),
            )
            state.epoch, state.batch_in_epoch = epoch, b + 1
            _emit(callbacks, "on_step", info)
            if checkpoint_dir and config.checkpoint_every and state.step % config.checkpoint_every == 0:
                _checkpoint(checkpoint_dir, model, optimizer, scheduler, state, best_tensors, callbacks)

        val_acc, val_loss = evaluate(model, val, config.batch_size)
        metrics = EpochMetrics(
            epoch, seen_loss / max(seen, 1), val_loss, val_acc, time.perf_counter() - epoch_start
        )
        state.history.append(metrics.__dict__)
        if val_acc > state.best["val_accuracy"]:
            state.best = {"epoch": epoch, "val_accuracy": val_acc}
            best_tensors = trainable_state(model)
        state.epoch, state.batch_in_epoch = epoch + 1, 0
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
    )


def _load_or_select(
    model: nn.Module, train: BatchSource, config: GRFTConfig, ckpt: Path | None
) -> tuple[Selection, bool]:
    """The checkpointed selection when resuming (``fresh=False``), else a new selection pass."""
    folder = ckpt / "selection" if ckpt else None
    if folder is not None and (folder / "selection.json").exists():
        return Selection.load(folder), False
    if config.method == "gps":
        selection = compute_gps_selection(model, train, config)
    else:
        selection = compute_selection(model, train, config)
    if folder is not None:
        selection.save(folder)
    return selection, True


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


def _use_bf16(config: GRFTConfig, device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    return config.precision in ("auto", "bf16")


def _emit(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)
