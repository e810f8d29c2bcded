"""Divergence detection and recovery for the training loop.

A run diverges when its loss stops being a number (NaN or infinity) or when the loss, averaged over
the last ``window`` steps, exceeds ``factor`` times its average over the first ``window`` steps. The
guard keeps a copy of the trainable tensors and the optimizer state from the last window that looked
healthy; on divergence the trainer restores that copy, halves the learning rate and goes on, at most
``max_retries`` times. After that the run stops with ``TrainingDiverged``: an adapter whose loss blew
up is worse than no adapter.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from grft_core.errors import GrftError

#: Steps averaged on each side of the comparison; ten smooths single noisy batches out.
WINDOW = 10
#: A loss three times its starting level is not noise: Adam with a sane rate does not get there.
FACTOR = 3.0
#: Below this initial loss the comparison uses this instead: a run resumed near a loss of 0.01 that
#: wobbles to 0.04 has not diverged.
FLOOR = 0.1
#: Halvings tried before giving up (an eighth of the asked rate after three).
MAX_RETRIES = 3


class TrainingDiverged(GrftError):
    """The loss diverged again after every allowed learning-rate halving."""

    status_code = 422
    code = "training_diverged"


@dataclass
class Divergence:
    """One detected divergence and what the trainer did about it (a callback's ``on_divergence``)."""

    step: int
    reason: str
    restored_step: int
    lr_scale: float
    retry: int
    max_retries: int


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cpu_copy(v) for v in value]
    return copy.deepcopy(value)


class DivergenceGuard:
    """Watches step losses, keeps the last good state, and says when to roll back.

    Args:
        window: steps averaged on each side of the loss comparison.
        factor: how many times its initial level the recent loss may reach.
        max_retries: roll-backs allowed before ``TrainingDiverged``.
    """

    def __init__(self, window: int = WINDOW, factor: float = FACTOR, max_retries: int = MAX_RETRIES) -> None:
        self.window, self.factor, self.max_retries = window, factor, max_retries
        self.initial: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)
        self.retries = 0
        self.snapshot: tuple[int, dict[str, Tensor], dict[str, Any]] | None = None
        self.since_snapshot = 0

    def check(self, loss: float) -> str | None:
        """Record one step's loss; the reason the run diverged, or None while it has not."""
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if len(self.initial) < self.window:
            self.initial.append(loss)
        self.recent.append(loss)
        if len(self.initial) == self.window and len(self.recent) == self.window:
            start, now = sum(self.initial) / self.window, sum(self.recent) / self.window
            if now > self.factor * max(start, FLOOR):
                return f"the loss rose to {now:.4g}, over {self.factor:g}x its initial {start:.4g}"
        return None

    def healthy(self) -> bool:
        """Whether the recent losses sit well under the divergence threshold (a state worth keeping)."""
        if not self.initial or not self.recent:
            return True
        start = sum(self.initial) / len(self.initial)
        return sum(self.recent) / len(self.recent) <= 0.5 * (1 + self.factor) * start

    def keep(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, force: bool = False
    ) -> None:
        """Copy the trainable tensors and optimizer state, every ``window`` healthy steps (or now if
        ``force``): the state a later divergence rolls back to."""
        self.since_snapshot += 1
        if not force and (self.since_snapshot < self.window or not self.healthy()):
            return
        tensors = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        self.snapshot = (step, tensors, _cpu_copy(optimizer.state_dict()))
        self.since_snapshot = 0

    def roll_back(
        self,
        step: int,
        reason: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> Divergence:
        """Restore the last good state and halve every group's learning rate.

        Returns:
            what was done, for the callbacks.
        Raises:
            TrainingDiverged: the retries are spent, or no good state was ever kept.
        """
        if self.retries >= self.max_retries or self.snapshot is None:
            raise TrainingDiverged(
                f"training diverged at step {step} ({reason}) after {self.retries} learning-rate halvings; "
                "lower the learning rate",
                param="learning_rate",
            )
        self.retries += 1
        kept_step, tensors, optimizer_state = self.snapshot
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
        optimizer.load_state_dict(_cpu_copy(optimizer_state))
        optimizer.zero_grad(set_to_none=True)
        # The schedule multiplies base_lrs, so halving them halves every later step's rate too.
        scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
        factor = _current_factor(scheduler)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * factor
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        self.recent.clear()
        return Divergence(
            step=step,
            reason=reason,
            restored_step=kept_step,
            lr_scale=0.5**self.retries,
            retry=self.retries,
            max_retries=self.max_retries,
        )


def _current_factor(scheduler: torch.optim.lr_scheduler.LRScheduler) -> float:
    """The schedule's multiplier at its current step (LambdaLR's first lambda)."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas:
        return 1.0
    return float(lambdas[0](scheduler.last_epoch))
