"""Layer wrappers that train only the selected rows or columns of a frozen weight.

A wrapped layer keeps its base module untouched and adds a trainable ``grft_delta`` that holds only
the selected slices: ``(k, in)`` for rows, ``(out, k)`` for columns (a Conv2d weight is seen as
``(out, in/groups · kh · kw)``). The effective weight is ``W + scatter(delta)``, so training the deltas
is exactly the paper's masked update of ``W``, but the backward never forms the full-size ``dW`` and
the optimizer holds state for the selected entries only.

For ``nn.Linear`` a custom autograd function does the work: its backward computes ``dx`` and the k-slice
gradient and nothing else. Convolutions go through ordinary autograd with the base weight frozen, which
already skips the dense weight gradient; the delta's contribution is a k-channel convolution (rows) or a
gather of k shifted input planes (columns).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

Axis = Literal["rows", "columns"]


class _RowDeltaLinear(torch.autograd.Function):
    """``y = x Wᵀ + b``, then ``y[..., I] += x Dᵀ``; backward yields ``dx`` and ``dD`` only."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")  # type: ignore[untyped-decorator]
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, delta: Tensor, indices: Tensor
    ) -> Tensor:
        y = F.linear(x, weight, bias)
        y.index_add_(-1, indices, torch.matmul(x, delta.t()).to(y.dtype))
        ctx.save_for_backward(x, weight, delta, indices)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")  # type: ignore[untyped-decorator]
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, delta, indices = ctx.saved_tensors
        grad_sel = grad_out.index_select(-1, indices)
        grad_x = grad_delta = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(grad_out, weight)
            # In-place rank-k update: no (N, in) temporary for the delta's share of dx.
            flat = grad_x.view(-1, grad_x.shape[-1])
            flat.addmm_(grad_sel.reshape(-1, grad_sel.shape[-1]).to(flat.dtype), delta.to(flat.dtype))
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        if ctx.needs_input_grad[3]:
            grad_delta = grad_sel.reshape(-1, grad_sel.shape[-1]).t().mm(x.reshape(-1, x.shape[-1]))
        return grad_x, None, grad_bias, grad_delta, None


class _ColumnDeltaLinear(torch.autograd.Function):
    """``y = x Wᵀ + b + x[..., J] Cᵀ``; saves only the k selected input columns for the backward."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")  # type: ignore[untyped-decorator]
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, delta: Tensor, indices: Tensor
    ) -> Tensor:
        x_sel = x.index_select(-1, indices)
        y = F.linear(x, weight, bias)
        flat = y.view(-1, y.shape[-1])
        flat.addmm_(x_sel.reshape(-1, x_sel.shape[-1]).to(flat.dtype), delta.t().to(flat.dtype))
        ctx.save_for_backward(x_sel if ctx.needs_input_grad[3] else None, weight, delta, indices)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")  # type: ignore[untyped-decorator]
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x_sel, weight, delta, indices = ctx.saved_tensors
        grad_x = grad_delta = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(grad_out, weight)
            grad_x.index_add_(-1, indices, torch.matmul(grad_out, delta).to(grad_x.dtype))
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        if ctx.needs_input_grad[3]:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])
            grad_delta = g2.t().mm(x_sel.reshape(-1, x_sel.shape[-1]).to(g2.dtype))
        return grad_x, None, grad_bias, grad_delta, None


def module_weight(module: nn.Module) -> Tensor:
    """A module's ``weight`` parameter, typed (``nn.Module`` attributes are untyped to checkers).

    Raises:
        TypeError: the module has no tensor ``weight``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def weight_matrix_shape(module: nn.Module) -> tuple[int, int]:
    """The ``(out, in)`` shape under which selection sees a Linear or Conv2d weight.

    Args:
        module: an ``nn.Linear`` or ``nn.Conv2d``.
    Returns:
        ``(out_features, in_features)`` or ``(out_channels, in_channels/groups · kh · kw)``.
    Raises:
        TypeError: any other module type.
    """
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.Conv2d):
        w = module.weight
        return int(w.shape[0]), int(w[0].numel())
    raise TypeError(f"no weight matrix view for {type(module).__name__}")


class GRFTLayer(nn.Module):
    """A frozen base layer plus trainable selected rows/columns (``grft_delta``) and bias (``grft_bias``).

    Args:
        base_layer: the ``nn.Linear`` or ``nn.Conv2d`` to wrap; its parameters are frozen, never copied.
        indices: sorted row (``axis="rows"``) or column indices into the weight matrix view.
        axis: which axis the indices address.
        train_bias: add a trainable bias delta (only if the base layer has a bias).
    """

    grft_indices: Tensor

    def __init__(
        self, base_layer: nn.Module, indices: Tensor, axis: Axis, *, train_bias: bool = True
    ) -> None:
        super().__init__()
        if axis not in ("rows", "columns"):
            raise ValueError(f"axis must be 'rows' or 'columns' (got {axis!r})")
        out_dim, in_dim = weight_matrix_shape(base_layer)
        limit = out_dim if axis == "rows" else in_dim
        indices = torch.as_tensor(indices, dtype=torch.long).flatten().sort().values
        if indices.numel() == 0 or int(indices[-1]) >= limit or int(indices[0]) < 0:
            raise ValueError(f"indices must be non-empty and within [0, {limit}) for axis {axis}")
        if torch.unique(indices).numel() != indices.numel():
            raise ValueError("indices must be unique")
        self.base_layer = base_layer
        self.axis: Axis = axis
        for p in base_layer.parameters():
            p.requires_grad_(False)
        weight = module_weight(base_layer)
        device, dtype = weight.device, weight.dtype
        self.register_buffer("grft_indices", indices.to(device))
        k = indices.numel()
        shape = (k, in_dim) if axis == "rows" else (out_dim, k)
        self.grft_delta: nn.Parameter = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))
        bias = getattr(base_layer, "bias", None)
        self.grft_bias = nn.Parameter(torch.zeros_like(bias)) if (train_bias and bias is not None) else None
        self.merged = False
        self._saved_rows: Tensor | None = None
        self._saved_bias: Tensor | None = None

    @property
    def k(self) -> int:
        """How many rows or columns this layer trains."""
        return int(self.grft_indices.numel())

    def _bias(self) -> Tensor | None:
        bias: Tensor | None = getattr(self.base_layer, "bias", None)
        if self.grft_bias is None or self.merged:
            return bias
        return self.grft_bias if bias is None else bias + self.grft_bias

    def forward(self, x: Tensor) -> Tensor:
        """Base output plus the delta's contribution (nothing extra once merged)."""
        if self.merged:
            out: Tensor = self.base_layer(x)
            return out
        if isinstance(self.base_layer, nn.Linear):
            fn = _RowDeltaLinear if self.axis == "rows" else _ColumnDeltaLinear
            result: Tensor = fn.apply(
                x, self.base_layer.weight, self._bias(), self.grft_delta, self.grft_indices
            )
            return result
        return self._conv_forward(x)

    def _conv_forward(self, x: Tensor) -> Tensor:
        conv = self.base_layer
        assert isinstance(conv, nn.Conv2d)
        y = F.conv2d(x, conv.weight, self._bias(), conv.stride, conv.padding, conv.dilation, conv.groups)
        if self.axis == "rows":
            return y.index_add(
                1, self.grft_indices, _conv_rows_delta(conv, x, self.grft_delta, self.grft_indices)
            )
        return y + _conv_columns_delta(conv, x, self.grft_delta, self.grft_indices)

    def delta_weight(self) -> Tensor:
        """The full-size ``ΔW`` in the base weight's own shape (for merging and tests, not training)."""
        weight = module_weight(self.base_layer)
        flat = torch.zeros(weight_matrix_shape(self.base_layer), dtype=weight.dtype, device=weight.device)
        delta = self.grft_delta.detach().to(weight.dtype)
        if self.axis == "rows":
            flat[self.grft_indices] = delta
        else:
            flat[:, self.grft_indices] = delta
        return flat.view_as(weight)

    @torch.no_grad()
    def merge(self) -> None:
        """Write the delta into the base weight in place; ``unmerge`` restores the base bit for bit."""
        if self.merged:
            return
        weight = module_weight(self.base_layer)
        flat = weight.view(weight.shape[0], -1)
        idx = self.grft_indices
        # Keep the original slices: (w + d) - d is not w in floating point, and unmerge must be exact.
        if self.axis == "rows":
            self._saved_rows = flat[idx].clone()
            flat[idx] += self.grft_delta.to(weight.dtype)
        else:
            self._saved_rows = flat[:, idx].clone()
            flat[:, idx] += self.grft_delta.to(weight.dtype)
        bias = getattr(self.base_layer, "bias", None)
        if self.grft_bias is not None and bias is not None:
            self._saved_bias = bias.detach().clone()
            bias.add_(self.grft_bias.to(bias.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo ``merge`` exactly, restoring the saved base slices and bias."""
        if not self.merged or self._saved_rows is None:
            return
        weight = module_weight(self.base_layer)
        flat = weight.view(weight.shape[0], -1)
        if self.axis == "rows":
            flat[self.grft_indices] = self._saved_rows
        else:
            flat[:, self.grft_indices] = self._saved_rows
        bias = getattr(self.base_layer, "bias", None)
        if self._saved_bias is not None and bias is not None:
            bias.copy_(self._saved_bias)
        self._saved_rows = self._saved_bias = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"axis={self.axis}, k={self.k}, train_bias={self.grft_bias is not None}"


def _conv_rows_delta(conv: nn.Conv2d, x: Tensor, delta: Tensor, indices: Tensor) -> Tensor:
    """Output planes of the selected rows' kernels: a k-output-channel convolution."""
    k = delta.shape[0]
    in_per_group = conv.weight.shape[1]
    kernel = delta.view(k, in_per_group, *conv.weight.shape[2:])
    if conv.groups == 1:
        return F.conv2d(x, kernel, None, conv.stride, conv.padding, conv.dilation)
    # Grouped: each selected output channel reads only its group's inputs, so gather those and
    # run a k-group convolution.
    out_per_group = conv.out_channels // conv.groups
    group = torch.div(indices, out_per_group, rounding_mode="floor")
    channels = (group[:, None] * in_per_group + torch.arange(in_per_group, device=x.device)).flatten()
    return F.conv2d(x.index_select(1, channels), kernel, None, conv.stride, conv.padding, conv.dilation, k)


def _conv_columns_delta(conv: nn.Conv2d, x: Tensor, delta: Tensor, indices: Tensor) -> Tensor:
    """Contribution of selected kernel columns ``(c, p, q)``: shifted input planes times ``delta``."""
    if isinstance(conv.padding, str):
        raise ValueError("string padding is not supported for column selection")
    kh, kw = conv.weight.shape[2:]
    ph, pw = conv.padding
    sh, sw = conv.stride
    dh, dw = conv.dilation
    in_per_group = conv.weight.shape[1]
    xp = F.pad(x, (pw, pw, ph, ph))
    h_out = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    c = torch.div(indices, kh * kw, rounding_mode="floor")
    p = torch.div(indices % (kh * kw), kw, rounding_mode="floor")
    q = indices % kw
    rows = (p * dh)[:, None] + sh * torch.arange(h_out, device=x.device)  # (k, h_out)
    cols = (q * dw)[:, None] + sw * torch.arange(w_out, device=x.device)  # (k, w_out)
    if conv.groups == 1:
        planes = xp[:, c[:, None, None], rows[:, :, None], cols[:, None, :]]  # (n, k, h_out, w_out)
        return F.conv2d(planes, delta[:, :, None, None])
    out_per_group = conv.out_channels // conv.groups
    group = torch.div(torch.arange(conv.out_channels, device=x.device), out_per_group, rounding_mode="floor")
    chan = group[:, None] * in_per_group + c[None, :]  # (out, k)
    planes = xp[
        :, chan[:, :, None, None], rows[None, :, :, None], cols[None, :, None, :]
    ]  # (n, out, k, h, w)
    return (planes * delta[None, :, :, None, None]).sum(2)
