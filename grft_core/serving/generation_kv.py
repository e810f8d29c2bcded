"""The running batch's key/value cache: requests join and leave between decoding steps.

Every running request is one row of a transformers ``DynamicCache`` plus one row of an attention mask.
Rows are left-padded to a common length: the requests that join at a step are prefilled together
(left-padded), then their cache is padded (or the batch's is) and concatenated along the batch axis; a
request that leaves is dropped by row selection, and columns that have become padding in every row are
cut off the front. Each row keeps its own position counter, so the padding changes no position id and
the mask hides it from attention.

Only full-attention layers are supported (``DynamicLayer``): a sliding-window layer keeps a window
whose left padding cannot be shifted this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def check_full_attention(cache: DynamicCache) -> None:
    """Refuse a cache with other than plain full-attention layers.

    Raises:
        NotImplementedError: a sliding-window, quantized or linear-attention layer.
    """
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"continuous batching needs full-attention cache layers, not {type(layer).__name__}"
            )


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, as ``check_full_attention`` found them."""
    return [cast(DynamicLayer, layer) for layer in cache.layers]


def _kv(layer: DynamicLayer) -> tuple[Tensor, Tensor]:
    keys, values = layer.keys, layer.values
    assert isinstance(keys, Tensor), "a prefilled layer holds tensors"
    assert isinstance(values, Tensor), "a prefilled layer holds tensors"
    return keys, values


def _pad_left(t: Tensor, extra: int) -> Tensor:
    """Left-pad the sequence axis (-2 of keys/values ``(B, H, L, D)``) with ``extra`` zeros."""
    return F.pad(t, (0, 0, extra, 0)) if extra else t


@dataclass
class BatchKV:
    """The cache, mask and next positions of the rows running now.

    Attributes:
        cache: one row per running request.
        mask: ``(B, L)`` long, 1 where a row has a real token.
        positions: ``(B,)`` the position id of each row's next token.
    """

    cache: DynamicCache
    mask: Tensor
    positions: Tensor

    @property
    def rows(self) -> int:
        """How many requests are in the batch."""
        return int(self.mask.shape[0])

    def join(self, other: BatchKV) -> None:
        """Append ``other``'s rows after this batch's (both left-padded to the longer length)."""
        length, other_length = int(self.mask.shape[1]), int(other.mask.shape[1])
        width = max(length, other_length)
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            (mk, mv), (tk, tv) = _kv(mine), _kv(theirs)
            mine.keys = torch.cat([_pad_left(mk, width - length), _pad_left(tk, width - other_length)])
            mine.values = torch.cat([_pad_left(mv, width - length), _pad_left(tv, width - other_length)])
        self.mask = torch.cat(
            [F.pad(self.mask, (width - length, 0)), F.pad(other.mask, (width - other_length, 0))]
        )
        self.positions = torch.cat([self.positions, other.positions])

    def keep(self, rows: Tensor) -> None:
        """Keep only ``rows`` (indices, in their new order), and cut columns that are padding in all."""
        self.mask = self.mask[rows]
        used = self.mask.any(0)
        first = int(used.long().argmax()) if bool(used.any()) else int(self.mask.shape[1])
        self.mask = self.mask[:, first:]
        for layer in _layers(self.cache):
            keys, values = _kv(layer)
            layer.keys, layer.values = keys[rows, :, first:], values[rows, :, first:]
        self.positions = self.positions[rows]

    def step_inputs(self) -> tuple[Tensor, Tensor]:
        """The attention mask and position ids of one decoding step (one new token per row)."""
        mask = F.pad(self.mask, (0, 1), value=1)
        return mask, self.positions.unsqueeze(1)

    def advance(self, mask: Tensor) -> None:
        """Record a finished step: ``mask`` from ``step_inputs`` now covers the cache."""
        self.mask = mask
        self.positions = self.positions + 1
