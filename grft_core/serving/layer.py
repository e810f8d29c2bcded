"""A base layer shared by many adapters: the base output once per batch, each item's own rows added.

``MultiAdapterLayer`` replaces a Linear or Conv2d of the served model. Every adapter that touches the
layer owns a *slot* of the layer's banks: its sorted row (or column) indices, padded to the widest k
any adapter has here, and its delta rows (or columns), padded with zeros. Slot 0 is all zeros and stands
for "no adapter". A forward gets, from the engine's ``BatchSlots``, one slot per batch item and computes:

* the base layer's output for the whole batch, once;
* for row adapters, ``x_b · D_bᵀ`` per item as one batched matmul (or one grouped convolution) and a
  ``scatter_add`` into the item's own output rows;
* for column adapters, the item's k selected input columns (one ``gather``) times its delta columns,
  added in place with ``baddbmm``;
* each item's bias delta, gathered by slot.

Padding is harmless: a padded index points at row 0 and its delta is zero, so it adds exactly 0.
There is no loop over items or adapters; the extra work per layer is proportional to k, not to the
layer's width, which is why many adapters cost little more than the base model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from grft_core.method.layers import Axis, weight_matrix_shape


@dataclass
class BatchSlots:
    """The slots of the batch being run, set by the engine before a forward and cleared after.

    An adapter has one slot in every layer and writes only its own axis's bank, so the same slot number
    reads zeros from the other axis's bank: one slot tensor serves both.

    Attributes:
        slots: ``(B,)`` slot of each item (0: no adapter), or None outside a served forward.
        axes: the axes the batch's adapters use (lets layers skip a path no item needs).
    """

    slots: Tensor | None = None
    axes: frozenset[str] = frozenset()


class SlotBank:
    """One axis of one layer: per slot, k padded indices and the delta rows or columns.

    Args:
        out_dim: rows of the weight matrix view.
        in_dim: columns of the weight matrix view.
        axis: ``rows`` (delta ``(k, in)``) or ``columns`` (delta ``(out, k)``).
        capacity: initial slot count (grows by doubling).
        device: where the bank lives.
        dtype: the delta dtype (the served model's).
    """

    def __init__(
        self, out_dim: int, in_dim: int, axis: Axis, capacity: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.out_dim, self.in_dim, self.axis = out_dim, in_dim, axis
        self.k = 1
        self.indices = torch.zeros(capacity, 1, dtype=torch.long, device=device)
        self.delta = torch.zeros(self._delta_shape(capacity, 1), dtype=dtype, device=device)

    def _delta_shape(self, capacity: int, k: int) -> tuple[int, int, int]:
        return (capacity, k, self.in_dim) if self.axis == "rows" else (capacity, self.out_dim, k)

    @property
    def capacity(self) -> int:
        """How many slots the bank holds now."""
        return int(self.indices.shape[0])

    def resize(self, capacity: int, k: int) -> None:
        """Grow to at least ``capacity`` slots and ``k`` entries per slot, keeping what is stored."""
        capacity, k = max(capacity, self.capacity), max(k, self.k)
        if capacity == self.capacity and k == self.k:
            return
        indices = self.indices.new_zeros(capacity, k)
        indices[: self.capacity, : self.k] = self.indices
        delta = self.delta.new_zeros(self._delta_shape(capacity, k))
        if self.axis == "rows":
            delta[: self.capacity, : self.k] = self.delta
        else:
            delta[: self.capacity, :, : self.k] = self.delta
        self.indices, self.delta, self.k = indices, delta, k

    def put(self, slot: int, indices: Tensor, delta: Tensor) -> None:
        """Store one adapter's indices ``(k,)`` and delta in ``slot`` (zero-padded to the bank's k)."""
        k = int(indices.numel())
        self.resize(slot + 1, k)
        self.clear(slot)
        self.indices[slot, :k] = indices.to(self.indices.device)
        if self.axis == "rows":
            self.delta[slot, :k] = delta.to(self.delta)
        else:
            self.delta[slot, :, :k] = delta.to(self.delta)

    def clear(self, slot: int) -> None:
        """Zero a slot, so it adds nothing if an item ever points at it."""
        if slot < self.capacity:
            self.indices[slot] = 0
            self.delta[slot] = 0


class MultiAdapterLayer(nn.Module):
    """A frozen Linear or Conv2d plus the banks of every adapter that changes it.

    Args:
        base_layer: the shared module (never modified).
        slots: the engine's ``BatchSlots`` (the same object for every layer of a model).
        capacity: initial slot capacity of the banks.
    """

    def __init__(self, base_layer: nn.Module, slots: BatchSlots, capacity: int = 8) -> None:
        super().__init__()
        if not isinstance(base_layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"cannot serve adapters on {type(base_layer).__name__}")
        if isinstance(base_layer, nn.Conv2d) and isinstance(base_layer.padding, str):
            raise TypeError("convolutions with string padding are not served")
        self.base_layer = base_layer
        self.slots = slots
        self._capacity = capacity
        self.out_dim, self.in_dim = weight_matrix_shape(base_layer)
        self.banks: dict[str, SlotBank] = {}
        self.bias: Tensor | None = None  # (capacity, out) bias deltas, created on first use

    def _bank(self, axis: Axis) -> SlotBank:
        if axis not in self.banks:
            w = self.base_layer.weight
            self.banks[axis] = SlotBank(self.out_dim, self.in_dim, axis, self._capacity, w.device, w.dtype)
        return self.banks[axis]

    def put(self, slot: int, axis: Axis, indices: Tensor, delta: Tensor, bias: Tensor | None) -> None:
        """Install one adapter's part of this layer in ``slot`` (its ``axis`` bank)."""
        if tuple(delta.shape) != (
            (indices.numel(), self.in_dim) if axis == "rows" else (self.out_dim, indices.numel())
        ):
            raise ValueError(
                f"delta {tuple(delta.shape)} does not fit a {self.out_dim}x{self.in_dim} {axis} view"
            )
        limit = self.out_dim if axis == "rows" else self.in_dim
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= limit):
            raise ValueError(f"indices outside [0, {limit})")
        self._bank(axis).put(slot, indices.long(), delta)
        if bias is not None:
            if self.bias is None or self.bias.shape[0] <= slot:
                self._grow_bias(max(slot + 1, 2 * (0 if self.bias is None else self.bias.shape[0])))
            assert self.bias is not None
            self.bias[slot] = bias.to(self.bias)
        elif self.bias is not None and slot < self.bias.shape[0]:
            self.bias[slot] = 0

    def _grow_bias(self, capacity: int) -> None:
        w = self.base_layer.weight
        grown = torch.zeros(max(capacity, self._capacity), self.out_dim, dtype=w.dtype, device=w.device)
        if self.bias is not None:
            grown[: self.bias.shape[0]] = self.bias
        self.bias = grown

    def clear(self, slot: int) -> None:
        """Remove whatever ``slot`` holds in this layer."""
        for bank in self.banks.values():
            bank.clear(slot)
        if self.bias is not None and slot < self.bias.shape[0]:
            self.bias[slot] = 0

    def forward(self, x: Tensor) -> Tensor:
        """The base output, plus each item's adapter rows/columns and bias delta."""
        y: Tensor = self.base_layer(x)
        slots = self.slots.slots
        if slots is None or not self.slots.axes:  # no item of this batch has an adapter
            return y
        if x.shape[0] != slots.shape[0]:
            raise RuntimeError(f"layer input batch {x.shape[0]} != {slots.shape[0]} items")
        base = self.base_layer
        conv = isinstance(base, nn.Conv2d)
        for axis, bank in self.banks.items():
            if axis not in self.slots.axes:
                continue
            # A slot past this bank's end belongs to an adapter that never touched it: read slot 0.
            own = slots * (slots < bank.capacity)
            if isinstance(base, nn.Conv2d):
                y = (_conv_rows if axis == "rows" else _conv_columns)(base, x, y, bank, own)
            else:
                y = (_linear_rows if axis == "rows" else _linear_columns)(x, y, bank, own)
        if self.bias is not None:
            b = self.bias[slots * (slots < self.bias.shape[0])]
            # In place: the base output is this layer's own fresh tensor, and inference keeps no graph.
            y.add_(b.view(b.shape[0], -1, 1, 1) if conv else b.view(b.shape[0], *([1] * (y.dim() - 2)), -1))
        return y


def _linear_rows(x: Tensor, y: Tensor, bank: SlotBank, slots: Tensor) -> Tensor:
    b = x.shape[0]
    x3 = x.reshape(b, -1, x.shape[-1])
    y3 = y.view(b, -1, y.shape[-1])
    contrib = torch.bmm(x3, bank.delta[slots].transpose(1, 2))  # (B, T, k)
    index = bank.indices[slots].unsqueeze(1).expand(-1, x3.shape[1], -1)
    y3.scatter_add_(2, index, contrib.to(y3.dtype))
    return y


def _linear_columns(x: Tensor, y: Tensor, bank: SlotBank, slots: Tensor) -> Tensor:
    b = x.shape[0]
    x3 = x.reshape(b, -1, x.shape[-1])
    y3 = y.view(b, -1, y.shape[-1])
    index = bank.indices[slots].unsqueeze(1).expand(-1, x3.shape[1], -1)
    y3.baddbmm_(x3.gather(2, index), bank.delta[slots].transpose(1, 2))  # (B,T,k) @ (B,k,out)
    return y


def _conv_rows(conv: nn.Conv2d, x: Tensor, y: Tensor, bank: SlotBank, slots: Tensor) -> Tensor:
    b, k = x.shape[0], bank.k
    in_per_group = conv.weight.shape[1]
    index = bank.indices[slots]  # (B, k) output channels
    if _pointwise(conv):
        # A 1x1, stride-1 convolution is a matmul over pixels: (B, k, C) @ (B, C, H·W).
        planes = torch.bmm(bank.delta[slots], x.reshape(b, x.shape[1], -1).to(bank.delta.dtype))
        planes = planes.view(b, k, *y.shape[2:])
        return y.scatter_add_(1, index[:, :, None, None].expand_as(planes), planes.to(y.dtype))
    kernel = bank.delta[slots].reshape(b * k, in_per_group, *conv.weight.shape[2:])
    if conv.groups == 1:
        # The batch becomes the groups: item b's k kernels see only item b's channels.
        planes = F.conv2d(
            x.reshape(1, -1, *x.shape[2:]), kernel, None, conv.stride, conv.padding, conv.dilation, b
        )
    else:
        # Grouped: each selected output channel reads its own group's inputs; one group per (item, row).
        out_per_group = conv.out_channels // conv.groups
        group = torch.div(index, out_per_group, rounding_mode="floor")
        channels = (group.unsqueeze(2) * in_per_group + torch.arange(in_per_group, device=x.device)).view(
            b, -1
        )
        gathered = x.gather(1, channels[:, :, None, None].expand(-1, -1, *x.shape[2:]))
        planes = F.conv2d(
            gathered.reshape(1, -1, *x.shape[2:]),
            kernel,
            None,
            conv.stride,
            conv.padding,
            conv.dilation,
            b * k,
        )
    planes = planes.view(b, k, *y.shape[2:])
    return y.scatter_add_(1, index[:, :, None, None].expand_as(planes), planes.to(y.dtype))


def _conv_columns(conv: nn.Conv2d, x: Tensor, y: Tensor, bank: SlotBank, slots: Tensor) -> Tensor:
    assert not isinstance(conv.padding, str)  # refused when the layer was built
    b, k = x.shape[0], bank.k
    if _pointwise(conv):
        # Column c of a 1x1 kernel reads input channel c: gather the k channels, one batched matmul.
        channels = bank.indices[slots]
        picked = x.reshape(b, x.shape[1], -1).gather(
            1, channels[:, :, None].expand(-1, -1, y.shape[2] * y.shape[3])
        )
        return y.view(b, y.shape[1], -1).baddbmm_(bank.delta[slots], picked.to(y.dtype)).view_as(y)
    kh, kw = conv.weight.shape[2:]
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    h_out, w_out = y.shape[2:]
    columns = bank.indices[slots]  # (B, k) into (in/groups · kh · kw)
    c = torch.div(columns, kh * kw, rounding_mode="floor")
    p = torch.div(columns % (kh * kw), kw, rounding_mode="floor")
    q = columns % kw
    rows = (p * dh).unsqueeze(2) + sh * torch.arange(h_out, device=x.device)  # (B, k, h_out)
    cols = (q * dw).unsqueeze(2) + sw * torch.arange(w_out, device=x.device)  # (B, k, w_out)
    xp = F.pad(x, (pw, pw, ph, ph))
    item = torch.arange(b, device=x.device)
    delta = bank.delta[slots]  # (B, out, k)
    if conv.groups == 1:
        planes = xp[item[:, None, None, None], c[:, :, None, None], rows[:, :, :, None], cols[:, :, None, :]]
        out = torch.bmm(delta, planes.reshape(b, k, -1).to(delta.dtype))  # (B, out, h·w)
        return y.add_(out.view_as(y).to(y.dtype))
    in_per_group = conv.weight.shape[1]
    out_per_group = conv.out_channels // conv.groups
    group = torch.div(torch.arange(conv.out_channels, device=x.device), out_per_group, rounding_mode="floor")
    chan = group[None, :, None] * in_per_group + c[:, None, :]  # (B, out, k)
    planes = xp[
        item[:, None, None, None, None],
        chan[:, :, :, None, None],
        rows[:, None, :, :, None],
        cols[:, None, :, None, :],
    ]  # (B, out, k, h, w)
    return y.add_((planes * delta[:, :, :, None, None].to(planes.dtype)).sum(2).to(y.dtype))


def _pointwise(conv: nn.Conv2d) -> bool:
    """A 1x1 convolution with stride 1, no padding and no groups: a per-pixel matmul."""
    return (
        conv.groups == 1
        and tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (0, 0)
    )
