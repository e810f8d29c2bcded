"""The GPS-style baseline: element-wise selection, trained through masked dense gradients.

GPS (Zhang et al. 2024, "Gradient-based Parameter Selection for Efficient Fine-Tuning") scores every
entry of every eligible weight matrix by the gradient of a selection loss accumulated over a pass of
the training data, keeps the top ``K`` entries of each output neuron (row), and fine-tunes the whole
matrices with the gradients of the other entries masked to zero. GRFT selects whole rows instead;
this module exists so the two can be compared through the same trainer.

The choice is stored as a ``Selection`` whose ``indices[name]`` is an ``(out, K)`` int64 tensor of the
chosen input positions of every row (sorted within each row) and whose ``meta["kind"]`` is ``"gps"``,
so the trainer saves and reloads it with a checkpoint like a row selection. Training uses the same
masked-gradient hooks as the masked-dense reference (``model.apply_weight_masks``). The adapter stores
the chosen positions and the changed values: ``<module>.gps_indices`` (int32, ``(out, K)``),
``<module>.gps_values`` (``W − W_pre`` at those positions), ``<module>.gps_bias`` (bias delta).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from grft_core.errors import ConfigError
from grft_core.method.layers import module_weight
from grft_core.method.model import apply_weight_masks, freeze
from grft_core.method.selection import ScoreMode, Selection, squared_gradient_scores

KIND = "gps"


def score_entries(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    batches: Iterable[Any],
    loss_fn: Callable[[Any], Tensor],
    *,
    score_mode: ScoreMode = "accumulated",
) -> dict[str, Tensor]:
    """Score every entry of every module's ``(out, in)`` weight view by its squared gradient.

    The same pass as ``selection.score_modules``, without the reduction over a row or column.

    Args:
        model: the network the loss runs through; every parameter's ``requires_grad`` is restored after.
        modules: name → Linear/Conv2d whose weights get scored.
        batches: anything ``loss_fn`` accepts, one item per backward pass.
        loss_fn: turns a batch into a scalar loss.
        score_mode: ``accumulated`` squares the gradient summed over batches (GPS);
            ``per_batch`` sums each batch's squared gradient (Fisher-style).
    Returns:
        name → float32 ``(out, in)`` scores, on the weights' device.
    Raises:
        ConfigError: ``batches`` was empty.
    """
    return squared_gradient_scores(
        model, modules, batches, loss_fn, score_mode=score_mode, reduce=lambda sq: sq
    )


def select_per_row(
    scores: Mapping[str, Tensor], per_row: int, meta: Mapping[str, Any] | None = None
) -> Selection:
    """Keep the ``per_row`` highest-scoring entries of every row (capped at the row length).

    Ties break toward the lower column index, so the choice is deterministic.

    Args:
        scores: name → ``(out, in)`` entry scores (from ``score_entries``).
        per_row: K, entries kept per output neuron.
        meta: how the scores were made; ``kind`` and ``per_row`` are added.
    Returns:
        a ``Selection`` with ``(out, K)`` column indices per module, sorted within each row.
    Raises:
        ConfigError: ``per_row`` is not positive, or there is nothing to select from.
    """
    if per_row < 1:
        raise ConfigError(f"gps_per_row must be at least 1 (got {per_row})", param="gps_per_row")
    if not scores:
        raise ConfigError("there is no eligible matrix to select entries from", param="gps_per_row")
    indices: dict[str, Tensor] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for name, s in scores.items():
        k = min(per_row, s.shape[1])
        order = torch.sort(s.cpu(), dim=1, descending=True, stable=True).indices
        indices[name] = order[:, :k].sort(dim=1).values
        shapes[name] = (int(s.shape[0]), int(s.shape[1]))
    return Selection(
        axis="rows", indices=indices, shapes=shapes, meta={**(meta or {}), "kind": KIND, "per_row": per_row}
    )


def is_gps_selection(selection: Selection | None) -> bool:
    """Whether ``selection`` holds GPS entry positions rather than GRFT rows/columns."""
    return selection is not None and selection.meta.get("kind") == KIND


def entry_masks(model: nn.Module, indices: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Boolean masks of the weights' shapes, true exactly on the chosen ``(row, column)`` entries.

    Args:
        model: the classifier whose named modules the indices refer to.
        indices: name → ``(out, K)`` column indices per row.
    Returns:
        name → mask shaped like the module's weight (a conv weight's ``(out, in·kh·kw)`` view folded back).
    """
    masks: dict[str, Tensor] = {}
    for name, idx in indices.items():
        w = module_weight(model.get_submodule(name))
        flat = torch.zeros(w.shape[0], w[0].numel(), dtype=torch.bool, device=w.device)
        flat.scatter_(1, idx.to(device=w.device, dtype=torch.int64), True)
        masks[name] = flat.view_as(w)
    return masks


def apply_gps(
    model: nn.Module, indices: Mapping[str, Tensor], *, train_bias: bool = True
) -> dict[str, Tensor]:
    """Freeze ``model`` except the chosen entries (through masked gradients), biases and the head.

    Args:
        model: the classifier; modified in place.
        indices: name → ``(out, K)`` column indices per row.
        train_bias: also train the masked modules' biases.
    Returns:
        name → mask.
    """
    freeze(model)
    masks = entry_masks(model, indices)
    apply_weight_masks(model, masks, train_bias=train_bias)
    return masks


def gps_adapter_tensors(
    model: nn.Module, base_state: Mapping[str, Tensor], indices: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The changed entries of a GPS run: positions, value deltas and bias deltas per module.

    Args:
        model: the trained classifier.
        base_state: its pre-trained ``state_dict()``.
        indices: name → ``(out, K)`` column indices per row.
    Returns:
        ``<m>.gps_indices`` (int32), ``<m>.gps_values`` and, for trained biases, ``<m>.gps_bias``.
    """
    out: dict[str, Tensor] = {}
    for name, idx in indices.items():
        module = model.get_submodule(name)
        w = module_weight(module).detach()
        flat, flat_pre = w.reshape(w.shape[0], -1), base_state[f"{name}.weight"].reshape(w.shape[0], -1)
        pos = idx.to(device=w.device, dtype=torch.int64)
        out[f"{name}.gps_indices"] = idx.to(torch.int32)
        out[f"{name}.gps_values"] = flat.gather(1, pos) - flat_pre.to(w.device).gather(1, pos)
        bias = getattr(module, "bias", None)
        if isinstance(bias, Tensor) and bias.requires_grad:
            out[f"{name}.gps_bias"] = bias.detach() - base_state[f"{name}.bias"].to(bias.device)
    return out


def gps_modules(tensors: Mapping[str, Tensor]) -> list[str]:
    """Module names stored in GPS adapter tensors, in stored order."""
    suffix = ".gps_indices"
    return [k.removesuffix(suffix) for k in tensors if k.endswith(suffix)]


def add_gps_tensors(model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Add a GPS adapter's stored deltas into ``model``'s weights and biases, in place (merged).

    Raises:
        KeyError: a module's values are missing.
        RuntimeError: shapes that do not fit the model.
    """
    with torch.no_grad():
        for name in gps_modules(tensors):
            module = model.get_submodule(name)
            w = module_weight(module)
            flat = w.view(w.shape[0], -1)
            pos = tensors[f"{name}.gps_indices"].to(device=w.device, dtype=torch.int64)
            flat.scatter_add_(1, pos, tensors[f"{name}.gps_values"].to(w.device, w.dtype))
            bias = getattr(module, "bias", None)
            if isinstance(bias, Tensor) and f"{name}.gps_bias" in tensors:
                bias.add_(tensors[f"{name}.gps_bias"].to(bias.device, bias.dtype))
