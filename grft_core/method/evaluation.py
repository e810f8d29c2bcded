"""Accuracy, loss and class probabilities of a classifier on encoded data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from grft_core.method.batching import BatchSource


@torch.no_grad()
def evaluate(
    model: nn.Module,
    source: BatchSource,
    batch_size: int = 64,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on every item of ``source``.

    Args:
        model: the classifier; put in eval mode for the call and restored after.
        source: encoded data with labels.
        batch_size: evaluation batch size.
        on_batch: called with ``(batches done, batches in all)`` after each batch (progress reports).
    Returns:
        ``(accuracy, loss)`` averaged over the labels the batches carry: one per item for a classifier,
        one per target token for a causal LM; ``(nan, nan)`` for an empty source.
    """
    if len(source) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    size = max(batch_size, 64)
    total = source.num_batches(size)
    try:
        for done, (inputs, labels) in enumerate(source.sequential(size), 1):
            logits = model(inputs).float()
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
            if on_batch is not None:
                on_batch(done, total)
    finally:
        model.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    return correct / count, loss_sum / count


@torch.no_grad()
def predict_proba(
    model: nn.Module, items: Sequence[Any], preprocessor: Any, device: torch.device, batch_size: int = 64
) -> Tensor:
    """Class probabilities ``(n, num_labels)`` for raw inputs (PIL images or strings)."""
    source = BatchSource(items, [0] * len(items), preprocessor, device)
    was_training = model.training
    model.eval()
    try:
        out = [torch.softmax(model(inputs).float(), 1).cpu() for inputs, _ in source.sequential(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
