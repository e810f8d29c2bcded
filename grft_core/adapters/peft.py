"""Export a GRFT adapter as an exact PEFT LoRA adapter for the plain model it was trained on.

An update of k selected rows is exactly a rank-k LoRA: ``ΔW = E_I · D`` with ``lora_A = D`` (k × in)
and ``lora_B = E_I`` (out × k, one-hot columns at the selected rows), scaling 1 (``lora_alpha = r``).
Columns are the transpose: ``lora_A`` one-hot rows, ``lora_B = C``. Convolutions use PEFT's Conv2d
LoRA (``lora_A`` a k-channel convolution with the base kernel size, ``lora_B`` a 1×1).

The export targets the *plain* model, not grft's wrapper, so that PEFT, vLLM and LoRAX attach it:

* a causal LM (a transformers ``PreTrainedModel``, or a wrapper holding one as a direct child): keys are
  the LM's own module paths, loadable with ``PeftModel.from_pretrained(AutoModelForCausalLM…, folder)``;
* a text classifier (``Classifier`` over a transformers encoder): keys lose ``backbone.`` and load onto
  ``AutoModel`` (the encoder class the backbone is); the head and the pooling go in ``head.safetensors``
  and ``grft_export.json`` next to the adapter, since no Hugging Face class pools the way grft does;
* an image classifier (``Classifier`` over a timm model): keys lose ``backbone.`` and load onto
  ``timm.create_model(arch, num_classes=0)`` through PEFT's custom-model support; head as above.

Anything else is refused with ``AdapterError``. The file holds ``base_model.model.<path>.lora_A.weight``
/ ``lora_B.weight`` (the names vLLM's loader parses), ``target_modules`` is the exact list of module
paths (so no empty LoRA attaches to a same-named module elsewhere) and there is no ``modules_to_save``
(vLLM refuses it). Every module gets the same rank (the largest k, smaller ones zero-padded, which
leaves ``B·A`` unchanged) because loaders that ignore ``rank_pattern`` would otherwise scale them wrongly.
Bias deltas are written as PEFT's ``bias="lora_only"`` (the full updated bias); PEFT loads them, vLLM
does not support LoRA biases.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from grft_core.adapters.format import GRFT_KINDS, WEIGHTS_NAME, Adapter
from grft_core.adapters.validation import check_fits
from grft_core.errors import AdapterError
from grft_core.method.layers import GRFTLayer, module_weight
from grft_core.method.model import HEAD

#: Files written next to the PEFT pair for classifiers (and the description, for every kind).
HEAD_FILE = "head.safetensors"
EXPORT_INFO = "grft_export.json"
README_FILE = "README.md"
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class PlainTarget:
    """The plain model an export loads onto.

    Attributes:
        kind: ``causal_lm``, ``text_classifier`` or ``image_classifier``.
        model: the plain module (the causal LM, the transformers encoder or the timm model).
        prefix: what the adapter's module names carry before the plain model's paths (``backbone.``).
    """

    kind: str
    model: nn.Module
    prefix: str


def plain_target(base_model: nn.Module) -> PlainTarget:
    """Find the plain Hugging Face or timm model inside ``base_model``.

    Args:
        base_model: a grft ``Classifier``, a transformers causal LM, or a module holding one as a child.
    Returns:
        the target.
    Raises:
        AdapterError: the model has no plain form a LoRA loader knows (param ``base_model``).
    """
    backbone = getattr(base_model, "backbone", None)
    if isinstance(backbone, nn.Module) and isinstance(getattr(base_model, HEAD, None), nn.Module):
        if getattr(base_model, "modality", None) == "text":
            if not _is_transformers(backbone):
                raise AdapterError(
                    "only classifiers over a transformers encoder or a timm model export as PEFT LoRA",
                    param="base_model",
                )
            return PlainTarget("text_classifier", backbone, "backbone.")
        if not type(backbone).__module__.startswith("timm."):
            raise AdapterError(
                "only classifiers over a transformers encoder or a timm model export as PEFT LoRA",
                param="base_model",
            )
        return PlainTarget("image_classifier", backbone, "backbone.")
    if _is_transformers(base_model):
        return PlainTarget("causal_lm", base_model, "")
    children = dict(base_model.named_children())
    lm = getattr(base_model, "lm", None)
    if isinstance(lm, nn.Module) and _is_transformers(lm) and all(c is not lm for c in children.values()):
        # A training view that registers the LM's own children under their own names: same paths.
        return PlainTarget("causal_lm", lm, "")
    for name, child in children.items():
        if _is_transformers(child):
            return PlainTarget("causal_lm", child, f"{name}.")
    raise AdapterError(
        f"a {type(base_model).__name__} has no plain transformers or timm form to export LoRA for",
        param="base_model",
    )


def _is_transformers(module: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(module, PreTrainedModel)


def export_peft_lora(
    adapter: Adapter, base_model: nn.Module, out: Path, *, base_name: str | None = None
) -> Path:
    """Write ``adapter`` as a PEFT LoRA folder for the plain form of ``base_model``.

    Args:
        adapter: a GRFT adapter (``grft`` or ``masked_dense``) with at least one module.
        base_model: the model the adapter's module names address (a grft ``Classifier``, or a causal
            LM); only read.
        out: destination folder (replaced if it exists; written atomically).
        base_name: recorded as ``base_model_name_or_path``: the registry name, which is also the
            model's folder name in the model store (defaults to the adapter's ``base_model``).
    Returns:
        ``out``.
    Raises:
        AdapterError: the adapter is not a GRFT adapter or trains no matrix; the model has no plain
            form; a module lies outside the plain model, is not a Linear or an ungrouped Conv2d, or
            its tensors do not fit (an index out of range, a delta of the wrong shape). Nothing is
            written then.
    """
    from peft import LoraConfig

    if adapter.method not in GRFT_KINDS or not adapter.modules:
        raise AdapterError("only GRFT adapters with selected rows or columns export as LoRA", param="method")
    target = plain_target(base_model)
    # Before anything is built: a negative index would silently address the last row.
    check_fits(adapter.config, adapter.tensors, base_model)
    axis = str(adapter.config.get("axis", "rows"))
    t = adapter.tensors
    r = max(int(t[f"{m}.grft_indices"].numel()) for m in adapter.modules)
    tensors: dict[str, Tensor] = {}
    paths: list[str] = []
    for m in adapter.modules:
        if not m.startswith(target.prefix):
            raise AdapterError(f"module {m} is outside the {target.kind}'s plain model", param="modules")
        path = m[len(target.prefix) :]
        layer = _base_layer(base_model.get_submodule(m))
        if not (isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)):
            raise AdapterError(
                f"{m} is a {type(layer).__name__}; PEFT LoRA export covers Linear and ungrouped Conv2d",
                param=m,
            )
        try:
            a, b = lora_factors(layer, t[f"{m}.grft_indices"], t[f"{m}.grft_delta"], axis, r)
        except (IndexError, RuntimeError, ValueError) as exc:
            raise AdapterError(f"adapter tensors do not fit {m}: {exc}", param=WEIGHTS_NAME) from exc
        key = _PEFT_PREFIX + path
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
        if f"{m}.grft_bias" in t:
            bias = getattr(layer, "bias")  # noqa: B009 (check_fits proved it exists)
            tensors[f"{key}.base_layer.bias"] = (bias.detach() + t[f"{m}.grft_bias"].to(bias.dtype)).clone()
        paths.append(path)
    has_bias = any(f"{m}.grft_bias" in t for m in adapter.modules)
    name = base_name or adapter.config.get("base_model")
    config = LoraConfig(
        r=r,
        lora_alpha=r,  # scaling alpha / r = 1: B·A is the update itself
        target_modules=paths,
        lora_dropout=0.0,
        bias="lora_only" if has_bias else "none",
        base_model_name_or_path=str(name) if name else None,
        task_type="CAUSAL_LM" if target.kind == "causal_lm" else None,
        inference_mode=True,
    )
    head = _head_tensors(t) if target.kind != "causal_lm" else {}
    info = _export_info(adapter, target, paths, name, bool(head))
    return _write(out, config, tensors, head, info)


def _base_layer(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, GRFTLayer) else module


@torch.no_grad()
def lora_factors(
    layer: nn.Module, indices: Tensor, delta: Tensor, axis: str, r: int
) -> tuple[Tensor, Tensor]:
    """The LoRA pair ``(lora_A, lora_B)`` of rank ``r`` whose product is the GRFT update of ``layer``.

    Args:
        layer: the base ``nn.Linear`` or ``nn.Conv2d`` (its weight gives shape and dtype).
        indices: the k selected rows (or columns of the ``(out, in·kh·kw)`` view).
        delta: ``(k, in)`` rows or ``(out, k)`` columns.
        axis: ``rows`` or ``columns``.
        r: the rank to write (>= k); the extra ``r - k`` factors are zero.
    Returns:
        ``lora_A`` ``(r, in)`` (Conv2d: ``(r, in, kh, kw)``) and ``lora_B`` ``(out, r)`` (Conv2d:
        ``(out, r, 1, 1)``), in the weight's dtype.
    Raises:
        ValueError, IndexError, RuntimeError: a delta or index that does not fit the layer.
    """
    weight = module_weight(layer)
    out_dim, in_dim = int(weight.shape[0]), int(weight[0].numel())
    idx = indices.long()
    k = int(idx.numel())
    if k > r:
        raise ValueError(f"k={k} exceeds the rank {r}")
    a = torch.zeros(r, in_dim, dtype=weight.dtype)
    b = torch.zeros(out_dim, r, dtype=weight.dtype)
    cols = torch.arange(k)
    d = delta.detach().to("cpu", weight.dtype)
    if axis == "rows":
        a[:k] = d.reshape(k, in_dim)
        b[idx, cols] = 1.0
    else:
        a[cols, idx] = 1.0
        b[:, :k] = d.reshape(out_dim, k)
    if isinstance(layer, nn.Conv2d):
        return a.view(r, *weight.shape[1:]).contiguous(), b.view(out_dim, r, 1, 1).contiguous()
    return a, b


def _head_tensors(t: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: t[f"{HEAD}.{n}"].detach().clone() for n in ("weight", "bias") if f"{HEAD}.{n}" in t}


def _export_info(
    adapter: Adapter, target: PlainTarget, paths: list[str], name: Any, has_head: bool
) -> dict[str, Any]:
    """What ``grft_export.json`` says: how to rebuild grft's outputs from the plain model."""
    cfg = adapter.config
    info: dict[str, Any] = {
        "format": "grft-peft-export",
        "format_version": 1,
        "kind": target.kind,
        "base_model": name,
        "base_fingerprint": cfg.get("base_fingerprint"),
        "axis": cfg.get("axis", "rows"),
        "target_modules": paths,
    }
    if target.kind == "causal_lm":
        info["load"] = (
            "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<base folder>), <this folder>)"
        )
        return info
    if target.kind == "text_classifier":
        info["load"] = "PeftModel.from_pretrained(AutoModel.from_pretrained(<base folder>), <this folder>)"
        info["pooling"] = "mean of last_hidden_state over positions where attention_mask is 1"
    else:
        arch = getattr(target.model, "pretrained_cfg", {}).get("architecture")
        info["timm_architecture"] = arch
        info["load"] = (
            f"PeftModel.from_pretrained(timm.create_model({arch!r}, num_classes=0) with the base "
            "weights loaded, <this folder>)"
        )
        info["pooling"] = "the timm model's own forward with num_classes=0 (its global pooling)"
    if has_head:
        info["head"] = {"file": HEAD_FILE, "logits": "pooled @ weight.T + bias"}
    info["labels"] = cfg.get("labels")
    info["preprocessing"] = cfg.get("preprocessing")
    return info


def _readme(info: Mapping[str, Any]) -> str:
    lines = [
        "# GRFT adapter exported as PEFT LoRA",
        "",
        f"Kind: {info['kind']}. Base model: {info['base_model']} (the folder of that name in the grft "
        "model store; `base_model_name_or_path` holds the name, not a local path).",
        "",
        f"Load: `{info['load']}`.",
        "",
        "The LoRA is exact: every module's `lora_B @ lora_A` (scaling 1) is the GRFT update.",
    ]
    if "head" in info:
        lines += [
            "",
            f"Classifier head: `{HEAD_FILE}` (`weight`, `bias`). Pooling: {info['pooling']}; "
            "then `logits = pooled @ weight.T + bias`; labels in order are in `grft_export.json`.",
        ]
    return "\n".join(lines) + "\n"


def _write(
    out: Path, config: Any, tensors: dict[str, Tensor], head: dict[str, Tensor], info: dict[str, Any]
) -> Path:
    """Write the folder under a temporary sibling and rename it into place when complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if head:
            save_file(head, str(tmp / HEAD_FILE), metadata={"format": "pt"})
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, default=str))
        (tmp / README_FILE).write_text(_readme(info))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
