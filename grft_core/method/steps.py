"""The pieces of one optimizer step that the trainer and the hyperparameter search share: the loss of a
batch, the optimizer with its parameter groups, and the warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from grft_core.method.config import GRFTConfig
from grft_core.method.model import HEAD


@dataclass
class BatchLoss:
    """The loss of one batch and, where it means something, how many items the model got right.

    Attributes:
        loss: the mean loss of the batch (what backward runs through).
        correct: items predicted right, or None when the task has no accuracy.
        count: items in the batch.
    """

    loss: Tensor
    correct: int | None
    count: int


LossFn = Callable[[nn.Module, Any, Tensor], BatchLoss]
"""``loss_fn(model, inputs, labels)``: the training loss of one batch (see ``classification_loss``)."""


def classification_loss(model: nn.Module, inputs: Any, labels: Tensor) -> BatchLoss:
    """Cross-entropy of a classifier's logits, with the batch's top-1 hits.

    Args:
        model: returns ``(batch, classes)`` logits for ``inputs``.
        inputs: one encoded batch.
        labels: class indices.
    Returns:
        the mean cross-entropy (computed in float32) and the number of correct predictions.
    """
    logits = model(inputs).float()
    loss = nn.functional.cross_entropy(logits, labels)
    correct = int((logits.detach().argmax(1) == labels).sum())
    return BatchLoss(loss=loss, correct=correct, count=len(labels))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``.

    Warm-up keeps Adam's first steps, whose second-moment estimate is still noisy, from throwing the
    freshly initialised head (and the deltas it drives) far from the pre-trained solution.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def steps_per_epoch(items: int, config: GRFTConfig) -> int:
    """Optimizer steps in one epoch of ``items`` examples (the last batch may be short)."""
    batches = math.ceil(items / config.batch_size)
    return math.ceil(batches / config.grad_accum_steps)


def build_optimizer(model: nn.Module, config: GRFTConfig) -> torch.optim.Adam:
    """Adam over the trainable parameters: the body at ``lr``, the head at ``head_lr`` (default ``lr``).

    L2 toward the pre-trained weights lives in the loss (the paper's formulation), so Adam has no
    weight decay.
    """
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(HEAD + ".")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(HEAD + ".")]
    groups: list[dict[str, Any]] = [{"params": body, "lr": config.lr}] if body else []
    groups.append({"params": head, "lr": config.head_lr or config.lr})
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=0.0)


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, config: GRFTConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + cosine schedule over ``total_steps`` (warm-up: ``config.warmup_ratio`` of them)."""
    warmup = int(config.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup))


def use_bf16(config: GRFTConfig, device: torch.device) -> bool:
    """Whether steps run under bf16 autocast: on CUDA, unless fp32 was asked."""
    if device.type != "cuda":
        return False
    return config.precision in ("auto", "bf16")
