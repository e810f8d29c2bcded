"""Model-level operations: which matrices are eligible, wrapping them, the L2 term, merging.

Module names are qualified names inside the classifier (``backbone.blocks.0.attn.qkv``); the head
(``task_head``) is never eligible: it is new and trained whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from grft_core.method.layers import Axis, GRFTLayer, module_weight

# Not plain "head": PEFT matches modules_to_save by name suffix, and timm CNNs have a "conv_head".
HEAD = "task_head"
_PATCH_EMBED = re.compile(r"(^|\.)(patch_embed|conv_stem|stem)(\.|$)")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def is_patch_embed(name: str) -> bool:
    """Whether a module name is the input embedding (ViT ``patch_embed``, CNN ``conv_stem``/``stem``)."""
    return bool(_PATCH_EMBED.search(name))


def eligible_modules(
    model: nn.Module, *, include_depthwise: bool = False, include_patch_embed: bool = True
) -> dict[str, nn.Module]:
    """The Linear and Conv2d layers whose weights GRFT may select from, in model order.

    A language model's output projection (what any module's ``get_output_embeddings()`` returns, e.g.
    ``lm_head``, often tied to the input embeddings) is never eligible, nor are embeddings (not
    Linear): for a decoder that leaves every Linear inside its layers (q, k, v, o, gate, up, down).

    Args:
        model: a classifier with a ``task_head`` attribute (excluded) and its backbone, or a causal LM.
        include_depthwise: also grouped/depthwise convolutions (``groups > 1``).
        include_patch_embed: also the patch embedding / stem convolution.
    Returns:
        qualified name → module (already-wrapped layers report their base layer).
    """
    found: dict[str, nn.Module] = {}
    outputs = _output_projections(model)
    for name, module in model.named_modules():
        if id(module) in outputs:
            continue
        if (
            name == HEAD
            or name.startswith(HEAD + ".")
            or ".base_layer" in name
            or name.endswith("base_layer")
        ):
            continue
        base = module.base_layer if isinstance(module, GRFTLayer) else module
        if isinstance(base, nn.Linear):
            found[name] = base
        elif isinstance(base, nn.Conv2d):
            if base.padding_mode != "zeros" or isinstance(base.padding, str):
                continue
            if base.groups > 1 and not include_depthwise:
                continue
            if is_patch_embed(name) and not include_patch_embed:
                continue
            found[name] = base
    return found


def _output_projections(model: nn.Module) -> set[int]:
    """Ids of the modules that some module of ``model`` reports as its output embeddings."""
    found: set[int] = set()
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        if not callable(getter):
            continue
        try:
            projection = getter()
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(projection, nn.Module):
            found.add(id(projection))
            base = getattr(projection, "base_layer", None)
            if isinstance(base, nn.Module):
                found.add(id(base))
    return found


def block_key(name: str) -> str | None:
    """The repeated block a module belongs to (``backbone.blocks.3.1``), or None outside any block."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            j = i
            while j + 1 < len(parts) and parts[j + 1].isdigit():
                j += 1
            return ".".join(parts[: j + 1])
    return None


def l2_module_names(names: Iterable[str], l2_layers: int | None) -> set[str]:
    """The modules in the regularised set R: those of the last ``l2_layers`` blocks plus every module
    outside a block (patch embedding, stem, final projections).

    Args:
        names: eligible module names in model order.
        l2_layers: how many of the last blocks to include; None means all.
    Returns:
        the subset of ``names`` the L2 term covers.
    """
    names = list(names)
    if l2_layers is None:
        return set(names)
    order: list[str] = []
    for n in names:
        key = block_key(n)
        if key is not None and key not in order:
            order.append(key)
    kept = set(order[len(order) - l2_layers :]) if l2_layers > 0 else set()
    return {n for n in names if block_key(n) is None or block_key(n) in kept}


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def freeze(model: nn.Module) -> None:
    """Turn off gradients for every parameter of ``model``."""
    for p in model.parameters():
        p.requires_grad_(False)


def apply_grft(
    model: nn.Module, indices: Mapping[str, Tensor], axis: Axis, *, train_bias: bool = True
) -> dict[str, GRFTLayer]:
    """Wrap the named modules in place so only their selected rows/columns (and biases) train.

    Everything else in the backbone is frozen; the head stays trainable.

    Args:
        model: the classifier.
        indices: module name → selected indices along ``axis``.
        axis: ``"rows"`` or ``"columns"``.
        train_bias: give each wrapped layer a trainable bias delta.
    Returns:
        module name → wrapper.
    Raises:
        KeyError: a name that is not a module of ``model``.
    """
    freeze(model)
    wrapped: dict[str, GRFTLayer] = {}
    for name, idx in indices.items():
        module = model.get_submodule(name)
        if isinstance(module, GRFTLayer):
            raise ValueError(f"{name} is already wrapped")
        layer = GRFTLayer(module, idx, axis, train_bias=train_bias)
        _set_submodule(model, name, layer)
        wrapped[name] = layer
    head = getattr(model, HEAD, None)
    if isinstance(head, nn.Module):
        for p in head.parameters():
            p.requires_grad_(True)
    return wrapped


def remove_grft(model: nn.Module) -> None:
    """Put every wrapped layer's base module back (deltas discarded, merged ones unmerged first)."""
    for name, layer in grft_layers(model).items():
        layer.unmerge()
        _set_submodule(model, name, layer.base_layer)


def grft_layers(model: nn.Module) -> dict[str, GRFTLayer]:
    """Every ``GRFTLayer`` inside ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, GRFTLayer)}


def masks_from_indices(model: nn.Module, indices: Mapping[str, Tensor], axis: Axis) -> dict[str, Tensor]:
    """Boolean masks of the base weights' shapes that are true on the selected rows/columns."""
    masks: dict[str, Tensor] = {}
    for name, idx in indices.items():
        w = module_weight(model.get_submodule(name))
        flat = torch.zeros(w.shape[0], w[0].numel(), dtype=torch.bool, device=w.device)
        if axis == "rows":
            flat[idx] = True
        else:
            flat[:, idx] = True
        masks[name] = flat.view_as(w)
    return masks


def apply_masked_dense(
    model: nn.Module, indices: Mapping[str, Tensor], axis: Axis, *, train_bias: bool = True
) -> dict[str, Tensor]:
    """The paper's formulation: the selected matrices train whole, their gradients multiplied by a mask.

    This is the reference GRFT is checked against and a baseline for benchmarks: it builds the
    full-size ``dW`` and full-size optimizer state that ``apply_grft`` avoids.

    Returns:
        module name → mask.
    """
    freeze(model)
    masks = masks_from_indices(model, indices, axis)
    apply_weight_masks(model, masks, train_bias=train_bias)
    return masks


def apply_weight_masks(model: nn.Module, masks: Mapping[str, Tensor], *, train_bias: bool = True) -> None:
    """Make the named modules' weights train whole with gradients multiplied by ``masks``, in place.

    Entries where the mask is false get a zero gradient (the L2 term's included), so Adam never moves
    them. The head stays trainable; nothing else is frozen here (callers freeze first).

    Args:
        model: the classifier.
        masks: module name → boolean mask of the weight's shape (any pattern: rows, columns, entries).
        train_bias: also train each masked module's bias, unmasked.
    Raises:
        AttributeError: a name that is not a module of ``model``.
    """
    for name, mask in masks.items():
        module = model.get_submodule(name)
        weight = module_weight(module)
        weight.requires_grad_(True)
        weight.register_hook(lambda g, m=mask: g * m)  # type: ignore[no-untyped-call]
        bias = getattr(module, "bias", None)
        if train_bias and isinstance(bias, Tensor):
            bias.requires_grad_(True)
    head = getattr(model, HEAD, None)
    if isinstance(head, nn.Module):
        for p in head.parameters():
            p.requires_grad_(True)


def freeze_norm_stats(model: nn.Module) -> None:
    """Put normalisation layers in eval mode so running statistics stay the pre-trained ones."""
    for m in model.modules():
        if isinstance(m, _NORMS):
            m.eval()


def grft_l2(model: nn.Module, names: Iterable[str]) -> Tensor:
    """``Σ ‖delta‖²`` over the named wrapped layers, which equals ``Σ ‖W − W_pre‖²`` on their weights
    because unselected entries never move.
    """
    layers = grft_layers(model)
    terms = [layers[n].grft_delta.pow(2).sum() for n in names if n in layers]
    if not terms:
        return _zero(model)
    return torch.stack(terms).sum()


def dense_l2(model: nn.Module, pre: Mapping[str, Tensor]) -> Tensor:
    """``Σ ‖W − W_pre‖²`` computed on full weights (masked-dense reference).

    Args:
        model: the model whose named modules' weights moved.
        pre: module name → pre-trained weight copy.
    """
    terms = [(module_weight(model.get_submodule(n)) - w).pow(2).sum() for n, w in pre.items()]
    if not terms:
        return _zero(model)
    return torch.stack(terms).sum()


def head_l2(model: nn.Module, head_init: Mapping[str, Tensor]) -> Tensor:
    """``‖H − H_init‖²`` of the classification head, anchored at its initialisation (0 for a model
    without a head: a causal LM keeps its own output projection)."""
    head = getattr(model, HEAD, None)
    if not isinstance(head, nn.Module):
        return _zero(model)
    terms = [(p - head_init[n]).pow(2).sum() for n, p in head.named_parameters() if n in head_init]
    if not terms:
        return _zero(model)
    return torch.stack(terms).sum()


def _zero(model: nn.Module) -> Tensor:
    p = next(model.parameters())
    return torch.zeros((), device=p.device, dtype=p.dtype)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; a wrapped layer's base weights count in the total once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(
        p.numel() for n, p in model.named_parameters() if ".grft_" not in n and not n.startswith("grft_")
    )
    return trainable, total


def merge_all(model: nn.Module) -> None:
    """Merge every wrapped layer's delta into its base weight."""
    for layer in grft_layers(model).values():
        layer.merge()


def unmerge_all(model: nn.Module) -> None:
    """Undo ``merge_all`` exactly."""
    for layer in grft_layers(model).values():
        layer.unmerge()
