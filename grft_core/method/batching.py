"""Turning a ``LabeledData`` into device batches, in a seeded order that a resumed run can replay."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from grft_core.cancel import check_stop

BatchDict = dict[str, Tensor]


class BatchSource:
    """Encodes a dataset once (images) or per batch (text) and yields batches in a replayable order.

    Image pixels are cached after the first encoding because decoding and resizing PIL images every
    step would cost more than the training step itself on small models; text is tokenised per batch
    so that padding follows the longest item of the batch, not of the dataset.

    Args:
        items: the dataset's inputs (PIL images or strings).
        labels: class indices, one per item.
        preprocessor: the model's preprocessing (``__call__(items) -> dict``).
        device: where batches go.
    """

    def __init__(
        self, items: Sequence[Any], labels: Sequence[int], preprocessor: Any, device: torch.device
    ) -> None:
        self.items = list(items)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.preprocessor = preprocessor
        self.device = device
        self._cache: BatchDict | None = None
        if getattr(preprocessor, "modality", "text") == "image":
            chunks = [_encode(preprocessor, self.items[i : i + 256]) for i in range(0, len(self.items), 256)]
            self._cache = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}

    def __len__(self) -> int:
        return len(self.items)

    def num_batches(self, batch_size: int) -> int:
        """How many batches an epoch has (the last one may be short)."""
        return (len(self.items) + batch_size - 1) // batch_size

    def order(self, seed: int, epoch: int) -> Tensor:
        """The permutation used for ``epoch``: a pure function of (seed, epoch), so resume can replay it."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self.items), generator=g)

    def batch(self, indices: Tensor) -> tuple[BatchDict, Tensor]:
        """The encoded inputs and labels of ``indices``, on the device.

        A preprocessor whose output holds ``labels`` supplies the batch's labels itself (a causal LM's
        target tokens, ``grft_core.method.causal_lm``); otherwise they are the items' class indices.
        """
        check_stop()  # every evaluation and training batch: see grft_core.cancel
        if self._cache is not None:
            inputs = {k: v[indices] for k, v in self._cache.items()}
        else:
            inputs = self.preprocessor([self.items[int(i)] for i in indices])
        labels = inputs.pop("labels", None)
        if labels is None:
            labels = self.labels[indices]
        return _to(inputs, self.device), labels.to(self.device)

    def epoch(
        self, batch_size: int, seed: int, epoch: int, start: int = 0
    ) -> Iterator[tuple[BatchDict, Tensor]]:
        """Batches of one shuffled epoch, skipping the first ``start`` (already trained before a resume)."""
        perm = self.order(seed, epoch)
        bucket = getattr(self.preprocessor, "bucket", None)
        if bucket is not None:
            # Batches of similar lengths (causal LMs): less padding, the same replayable order.
            perm = bucket(self.items, perm, batch_size, seed * 1_000_003 + epoch)
        for b in range(start, self.num_batches(batch_size)):
            yield self.batch(perm[b * batch_size : (b + 1) * batch_size])

    def sequential(self, batch_size: int) -> Iterator[tuple[BatchDict, Tensor]]:
        """Batches in dataset order (evaluation)."""
        for start in range(0, len(self.items), batch_size):
            yield self.batch(torch.arange(start, min(start + batch_size, len(self.items))))


def _encode(preprocessor: Any, items: list[Any]) -> BatchDict:
    check_stop()
    result: BatchDict = preprocessor(items)
    return result


def _to(batch: BatchDict, device: torch.device) -> BatchDict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
