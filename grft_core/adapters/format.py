"""The adapter: what a run produces, in PEFT's file names.

A folder with ``adapter_config.json`` and ``adapter_model.safetensors``. For GRFT (and for the
masked-dense reference and linear probing, which it also represents exactly) the tensors are
``<module>.grft_indices`` (int32), ``<module>.grft_delta`` (the selected rows or columns),
``<module>.grft_bias`` (bias deltas, when trained) and ``task_head.weight``/``task_head.bias`` (absent
for a causal language model, ``"task": "causal_lm"`` in the config: its output projection is the
base's). LoRA runs keep their ``lora_A``/``lora_B`` tensors and full fine-tuning its whole state; both
exist for comparison.
The GPS-style baseline stores its chosen entries and their changes (``<module>.gps_indices``,
``<module>.gps_values``, ``<module>.gps_bias``; see ``grft_core.method.gps``) and loads them merged.

Loading checks the base model's fingerprint, so an adapter is never applied to other weights, and
checks the files themselves (``grft_core.adapters.validation``): a truncated safetensors file, a missing
tensor, a wrong dtype or shape, unsorted, duplicated or out-of-range indices and non-finite values all
raise ``AdapterError`` before any tensor reaches a model.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from grft_core.adapters.validation import GRFT_KINDS as GRFT_KINDS
from grft_core.adapters.validation import WEIGHTS_NAME as WEIGHTS_NAME
from grft_core.adapters.validation import check_adapter, check_fits, read_tensors
from grft_core.errors import AdapterError, FingerprintMismatch
from grft_core.method.config import GRFTConfig
from grft_core.method.gps import add_gps_tensors, gps_adapter_tensors
from grft_core.method.layers import module_weight
from grft_core.method.model import HEAD, apply_grft, freeze, grft_layers, merge_all, unmerge_all
from grft_core.method.setup import inject_lora
from grft_core.models.causal import causal_lm_state
from grft_core.models.serialization import fingerprint_state_dict

CONFIG_NAME = "adapter_config.json"
FORMAT = "grft-adapter"
FORMAT_VERSION = 1
_DELTA_SUFFIXES = (".grft_delta", ".grft_bias", ".gps_values", ".gps_bias")


@dataclass
class Adapter:
    """An adapter in memory: its config document and its tensors."""

    config: dict[str, Any]
    tensors: dict[str, Tensor]

    @property
    def method(self) -> str:
        """The training method that produced it."""
        return str(self.config["method"])

    @property
    def modules(self) -> list[str]:
        """Wrapped module names (GRFT kinds)."""
        return list(self.config.get("modules", {}))

    def nbytes(self) -> int:
        """Bytes of tensor data."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def backbone_fingerprint(model: nn.Module) -> str:
    """Fingerprint of the classifier's backbone weights as they are now (wrapped layers seen unwrapped);
    for a model without a backbone (a causal LM) its whole weights, tied tensors counted once."""
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        return fingerprint_state_dict(causal_lm_state(model))
    state = {
        k.replace(".base_layer.", "."): v
        for k, v in cast(nn.Module, model.backbone).state_dict().items()
        if ".grft_" not in k
    }
    return fingerprint_state_dict(state)


def adapter_tensors(
    model: nn.Module,
    method: str,
    base_state: Mapping[str, Tensor] | None = None,
    selection_indices: Mapping[str, Tensor] | None = None,
    axis: str = "rows",
) -> dict[str, Tensor]:
    """Collect the tensors of a trained model in adapter layout.

    Args:
        model: the trained classifier.
        method: the method it was trained with.
        base_state: pre-trained ``model.state_dict()`` (needed for ``masked_dense`` and ``gps`` to
            compute deltas).
        selection_indices: the selection (needed for ``masked_dense`` and ``gps``).
        axis: the selection axis (``masked_dense``).
    Returns:
        name → tensor (CPU, contiguous).
    Raises:
        AdapterError: ``masked_dense`` or ``gps`` without its base state or selection.
    """
    out: dict[str, Tensor] = {}
    if method == "grft":
        for name, layer in grft_layers(model).items():
            out[f"{name}.grft_indices"] = layer.grft_indices.to(torch.int32)
            out[f"{name}.grft_delta"] = layer.grft_delta.detach()
            if layer.grft_bias is not None:
                out[f"{name}.grft_bias"] = layer.grft_bias.detach()
    elif method == "masked_dense":
        if base_state is None or selection_indices is None:
            raise AdapterError(
                "masked_dense adapters need the base weights and the selection", param="method"
            )
        for name, idx in selection_indices.items():
            w = module_weight(model.get_submodule(name)).detach()
            flat, flat_pre = w.view(w.shape[0], -1), base_state[f"{name}.weight"].view(w.shape[0], -1)
            delta = (flat[idx] - flat_pre[idx]) if axis == "rows" else (flat[:, idx] - flat_pre[:, idx])
            out[f"{name}.grft_indices"] = idx.to(torch.int32)
            out[f"{name}.grft_delta"] = delta
            bias = getattr(model.get_submodule(name), "bias", None)
            if bias is not None and bias.requires_grad:
                out[f"{name}.grft_bias"] = bias.detach() - base_state[f"{name}.bias"]
    elif method == "gps":
        if base_state is None or selection_indices is None:
            raise AdapterError("gps adapters need the base weights and the selection", param="method")
        out.update(gps_adapter_tensors(model, base_state, selection_indices))
    elif method == "lora":
        out.update({n: p.detach() for n, p in model.named_parameters() if "lora_" in n})
    elif method == "full":
        # A causal LM (no backbone) stores tied tensors once, as its store entry does.
        lm = not isinstance(getattr(model, "backbone", None), nn.Module)
        state = causal_lm_state(model) if lm else model.state_dict()
        out.update({n: t.detach() for n, t in state.items()})
    head = getattr(model, HEAD, None)
    if method != "full" and isinstance(head, nn.Module):
        out.update({f"{HEAD}.{n}": p.detach() for n, p in head.named_parameters()})
    return {k: v.cpu().contiguous() for k, v in out.items()}


def save_adapter(
    folder: Path,
    tensors: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    fp16: bool = False,
) -> Path:
    """Write an adapter folder atomically (a temporary sibling renamed into place when complete).

    Args:
        folder: destination; replaced if it exists.
        tensors: from ``adapter_tensors``.
        config: the config document (method, base model, fingerprint, labels, preprocessing, metrics...).
        fp16: store floating deltas (GRFT rows, GPS values, bias deltas) in float16 (indices stay int32;
            the head stays in its dtype).
    Returns:
        ``folder``.
    """
    doc = dict(config)
    doc.setdefault("format", FORMAT)
    doc.setdefault("format_version", FORMAT_VERSION)
    stored = {}
    for name, t in tensors.items():
        if fp16 and t.is_floating_point() and name.endswith(_DELTA_SUFFIXES):
            t = t.half()
        stored[name] = t
    doc["dtype"] = "float16" if fp16 else str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(stored, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
    (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2, default=str))
    doc["adapter_bytes"] = (tmp / WEIGHTS_NAME).stat().st_size
    (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2, default=str))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_adapter(folder: Path) -> Adapter:
    """Read an adapter folder and check that its config and tensors agree.

    Raises:
        AdapterError: a file is missing or unreadable, the config is not a GRFT adapter of a known
            version, or the tensors are malformed (see ``grft_core.adapters.validation``).
    """
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise AdapterError(f"{folder} has no {name}", param=name)
    try:
        doc = json.loads((folder / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{CONFIG_NAME} is not valid JSON: {exc}", param=CONFIG_NAME) from exc
    if not isinstance(doc, dict):
        raise AdapterError(f"{CONFIG_NAME} is not a JSON object", param=CONFIG_NAME)
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise AdapterError(
            f"{CONFIG_NAME} is not a {FORMAT} v{FORMAT_VERSION} config (got {doc.get('format')!r} "
            f"v{doc.get('format_version')!r})",
            param=CONFIG_NAME,
        )
    tensors = read_tensors(folder / WEIGHTS_NAME)
    check_adapter(doc, tensors)
    return Adapter(config=doc, tensors=tensors)


def apply_adapter(model: nn.Module, adapter: Adapter, *, check_fingerprint: bool = True) -> nn.Module:
    """Apply ``adapter`` to a freshly loaded base classifier, unmerged, in place; everything frozen.

    Args:
        model: a classifier with the adapter's base weights and a head of the adapter's label count.
        adapter: from ``load_adapter``.
        check_fingerprint: refuse a base whose weights differ from the adapter's recorded fingerprint.
    Returns:
        ``model`` (for chaining).
    Raises:
        FingerprintMismatch: the base weights differ.
        AdapterError: tensors that do not fit the model (``model`` may then be partly changed).
    """
    expected = adapter.config.get("base_fingerprint")
    if check_fingerprint and expected and backbone_fingerprint(model) != expected:
        raise FingerprintMismatch(
            f"adapter was trained on base {adapter.config.get('base_model')!r} with fingerprint {expected}, "
            "but the model offered has different weights",
            param="base_fingerprint",
        )
    check_fits(adapter.config, adapter.tensors, model)
    method = adapter.method
    t = adapter.tensors
    try:
        if method in GRFT_KINDS:
            indices = {m: t[f"{m}.grft_indices"].long() for m in adapter.modules}
            has_bias = any(f"{m}.grft_bias" in t for m in adapter.modules)
            layers = apply_grft(model, indices, adapter.config.get("axis", "rows"), train_bias=has_bias)
            with torch.no_grad():
                for m, layer in layers.items():
                    layer.grft_delta.copy_(t[f"{m}.grft_delta"])
                    if layer.grft_bias is not None and f"{m}.grft_bias" in t:
                        layer.grft_bias.copy_(t[f"{m}.grft_bias"])
        elif method == "gps":
            add_gps_tensors(model, t)
        elif method == "lora":
            inject_lora(model, GRFTConfig.from_dict(adapter.config["config"]))
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in t.items():
                    if "lora_" in name:
                        params[name].copy_(value)
        elif method == "full":
            missing, unexpected = model.load_state_dict(t, strict=False)
            # Only a tied copy (a causal LM's output projection) may be absent from the file.
            if unexpected or set(missing) - _tied_names(model):
                raise KeyError(f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        head = getattr(model, HEAD, None)
        if method != "full" and isinstance(head, nn.Module):
            with torch.no_grad():
                for n, p in head.named_parameters():
                    p.copy_(t[f"{HEAD}.{n}"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise AdapterError(f"adapter tensors do not fit the model: {exc}", param=WEIGHTS_NAME) from exc
    freeze(model)
    model.eval()
    return model


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict names whose tensor another, earlier name already holds (tied weights)."""
    return set(model.state_dict()) - set(causal_lm_state(model))


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy of an adapted classifier with every delta merged into its weights."""
    other = copy.deepcopy(model)
    merge_all(other)
    return other


def merge(model: nn.Module) -> None:
    """Merge every GRFT delta into its base weight in place (``unmerge`` restores bit for bit)."""
    merge_all(model)


def unmerge(model: nn.Module) -> None:
    """Restore every merged base weight exactly."""
    unmerge_all(model)
