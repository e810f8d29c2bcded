"""Export a GRFT adapter as an exact PEFT LoRA adapter.

An update of k selected rows is exactly a rank-k LoRA: ``ΔW = E_I · D`` with ``lora_A = D`` (k × in)
and ``lora_B = E_I`` (out × k, one-hot columns at the selected rows), scaling 1 (``lora_alpha = r``).
Columns are the transpose: ``lora_A`` one-hot rows, ``lora_B = C``. Convolutions use PEFT's Conv2d
LoRA (``lora_A`` a k-channel convolution with the base kernel size, ``lora_B`` a 1×1). Bias deltas go
through PEFT's ``bias="lora_only"`` and the head through ``modules_to_save``. The files are written by
PEFT itself, so anything that loads PEFT LoRA adapters can serve the result.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grft_core.adapters.format import GRFT_KINDS, WEIGHTS_NAME, Adapter
from grft_core.adapters.validation import check_fits
from grft_core.errors import AdapterError
from grft_core.method.model import HEAD


def export_peft_lora(adapter: Adapter, base_model: nn.Module, out: Path) -> Path:
    """Write ``adapter`` as a PEFT LoRA folder for ``base_model``.

    Args:
        adapter: a GRFT adapter (``grft`` or ``masked_dense``) with at least one module.
        base_model: a classifier with the adapter's base weights (not modified; a copy is used).
        out: destination folder (replaced if it exists; written atomically).
    Returns:
        ``out``.
    Raises:
        AdapterError: the adapter is not a GRFT adapter, trains no matrix, uses grouped convolutions, or
            its tensors do not fit ``base_model`` (an index out of range, a delta of the wrong shape);
            nothing is written then.
    """
    from peft import LoraConfig, get_peft_model

    if adapter.method not in GRFT_KINDS or not adapter.modules:
        raise AdapterError("only GRFT adapters with selected rows or columns export as LoRA", param="method")
    # Before PEFT sees it: a negative index would silently address the last row, a large one raise
    # deep inside the copy below.
    check_fits(adapter.config, adapter.tensors, base_model)
    axis = adapter.config.get("axis", "rows")
    t = adapter.tensors
    ks = {m: int(t[f"{m}.grft_indices"].numel()) for m in adapter.modules}
    for m in ks:
        layer = base_model.get_submodule(m)
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise AdapterError(f"{m} is a grouped convolution, which PEFT LoRA cannot express", param=m)
    r = max(ks.values())
    pattern = {m: k for m, k in ks.items() if k != r}
    has_bias = any(f"{m}.grft_bias" in t for m in ks)
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        target_modules=list(ks),
        lora_dropout=0.0,
        bias="lora_only" if has_bias else "none",
        modules_to_save=[HEAD],
    )
    peft_model = get_peft_model(copy.deepcopy(base_model), config)
    inner: Any = peft_model.base_model.model  # PEFT's wrapped modules are untyped
    try:
        _fill(inner, t, ks, axis)
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        raise AdapterError(f"adapter tensors do not fit the model: {exc}", param=WEIGHTS_NAME) from exc
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


@torch.no_grad()
def _fill(inner: Any, t: Mapping[str, Tensor], ks: Mapping[str, int], axis: str) -> None:
    """Write each module's rows (or columns) and bias delta into PEFT's LoRA layers, and the head."""
    for m, k in ks.items():
        lora_layer = inner.get_submodule(m)
        a = lora_layer.lora_A["default"].weight
        b = lora_layer.lora_B["default"].weight
        idx = t[f"{m}.grft_indices"].long()
        delta = t[f"{m}.grft_delta"].to(a.dtype)
        a.zero_()
        b.zero_()
        cols = torch.arange(k)
        if axis == "rows":
            a.view(k, -1).copy_(delta.view(k, -1))
            b.view(b.shape[0], k)[idx, cols] = 1.0
        else:
            a.view(k, -1)[cols, idx] = 1.0
            b.view(b.shape[0], k).copy_(delta.view(b.shape[0], k))
        if f"{m}.grft_bias" in t:
            lora_layer.base_layer.bias.add_(t[f"{m}.grft_bias"].to(a.dtype))
    head = inner.get_submodule(HEAD).modules_to_save["default"]
    for n, p in head.named_parameters():
        p.copy_(t[f"{HEAD}.{n}"])
