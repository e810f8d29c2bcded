"""Checks that an adapter's files are what they claim to be, before any tensor reaches a model.

An adapter folder is user data (uploaded, downloaded, or left half-written by a crash), so every reader
goes through these checks and gets an ``AdapterError`` (422 ``invalid_adapter``) naming the file and
tensor at fault, instead of a parse error, an index error deep in a kernel, or NaN scores:

* ``read_tensors``: the safetensors file parses (a truncated or garbled file is refused).
* ``check_adapter``: the config and the tensors agree on their own, without the base model: every
  listed module has its indices (int32/int64, 1-D, non-empty, ≥ 0, strictly increasing, so sorted and
  without duplicates, and below the recorded weight shape) and its delta (floating, ``(k, in)`` for rows,
  ``(out, k)`` for columns); the head has one row per label; every floating tensor is finite.
* ``check_fits``: the adapter fits a given model: each module exists and is a Linear or Conv2d whose
  weight view has room for the indices and the delta's shape, and the head reads the model's features.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from grft_core.errors import AdapterError
from grft_core.method.layers import weight_matrix_shape
from grft_core.method.model import HEAD

#: ``task`` of an adapter trained on a causal language model (``grft_core.lm_pipeline``).
CAUSAL_LM_TASK = "causal_lm"

WEIGHTS_NAME = "adapter_model.safetensors"
GRFT_KINDS = ("grft", "masked_dense", "linear_probe")
METHODS = (*GRFT_KINDS, "gps", "lora", "full")
_INDEX_DTYPES = (torch.int32, torch.int64)
_GRFT_SUFFIXES = (".grft_indices", ".grft_delta", ".grft_bias")


def _bad(message: str) -> AdapterError:
    return AdapterError(message, param=WEIGHTS_NAME)


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Read a safetensors file (never unpickles).

    Returns:
        name → tensor (CPU).
    Raises:
        AdapterError: the file cannot be read or is not a complete safetensors file.
    """
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _bad(f"{path.name} is not a readable safetensors file: {exc}") from exc


def check_adapter(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
    """Check an adapter's config and tensors against each other (no model needed).

    Raises:
        AdapterError: the first inconsistency found, naming the field or tensor.
    """
    method = config.get("method")
    if method not in METHODS:
        raise AdapterError(f"unknown adapter method {method!r}", param="method")
    base = config.get("base_model")
    if not isinstance(base, str) or not base:
        raise AdapterError("the adapter config names no base_model", param="base_model")
    if not isinstance(config.get("base_fingerprint", ""), str | None):
        raise AdapterError("base_fingerprint must be a string", param="base_fingerprint")
    if config.get("axis", "rows") not in ("rows", "columns"):
        raise AdapterError(f"axis must be rows or columns, not {config.get('axis')!r}", param="axis")
    _check_training_config(config.get("config"))
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _bad(f"tensor {name} holds NaN or infinite values")
    if method == "full":
        return
    # A causal LM's adapter has no labels and no head: the base model's output projection stays.
    if config.get("task") != CAUSAL_LM_TASK:
        labels = config.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str | int) for x in labels):
            raise AdapterError("labels must be a non-empty list of names", param="labels")
        _check_head(tensors, len(labels))
    if method in GRFT_KINDS:
        _check_grft(config, tensors)
    elif method == "gps":
        _check_gps(tensors)


def _check_training_config(train: Any) -> None:
    if train is None:
        return
    if not isinstance(train, dict):
        raise AdapterError("config must be an object", param="config")
    for key in ("image_size", "max_length"):
        value = train.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise AdapterError(f"config.{key} must be a positive integer, not {value!r}", param=key)


def _floating(tensors: Mapping[str, Tensor], name: str, dims: int) -> Tensor:
    t = tensors.get(name)
    if t is None:
        raise _bad(f"tensor {name} is missing")
    if not t.is_floating_point():
        raise _bad(f"tensor {name} has dtype {t.dtype}; a floating dtype is expected")
    if t.dim() != dims:
        raise _bad(f"tensor {name} has shape {tuple(t.shape)}; {dims} dimensions are expected")
    return t


def _check_head(tensors: Mapping[str, Tensor], labels: int) -> None:
    weight = _floating(tensors, f"{HEAD}.weight", 2)
    bias = _floating(tensors, f"{HEAD}.bias", 1)
    if weight.shape[0] != labels or bias.shape[0] != labels:
        raise _bad(
            f"head {tuple(weight.shape)} + bias {tuple(bias.shape)} does not give one row per label "
            f"({labels} labels)"
        )


def module_names(config: Mapping[str, Any]) -> list[str]:
    """The module names a GRFT config lists.

    Raises:
        AdapterError: ``modules`` is neither a list of names nor an object keyed by name.
    """
    modules = config.get("modules", {})
    if not isinstance(modules, dict | list) or not all(isinstance(m, str) and m for m in modules):
        raise AdapterError("modules must be a list or an object of module names", param="modules")
    return list(modules)


def _recorded_shape(config: Mapping[str, Any], module: str) -> tuple[int, int] | None:
    modules = config.get("modules")
    info = modules.get(module) if isinstance(modules, dict) else None
    shape = info.get("shape") if isinstance(info, dict) else None
    if isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape):
        return int(shape[0]), int(shape[1])
    return None


def _check_indices(name: str, idx: Tensor, limit: int | None) -> None:
    if idx.dtype not in _INDEX_DTYPES:
        raise _bad(f"tensor {name} has dtype {idx.dtype}; int32 is expected")
    if idx.dim() != 1 or idx.numel() == 0:
        raise _bad(f"tensor {name} has shape {tuple(idx.shape)}; a non-empty vector is expected")
    if int(idx.min()) < 0:
        raise _bad(f"tensor {name} holds a negative index ({int(idx.min())})")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise _bad(f"tensor {name} is not strictly increasing (unsorted or duplicated indices)")
    if limit is not None and int(idx.max()) >= limit:
        raise _bad(f"tensor {name} holds index {int(idx.max())}, outside [0, {limit})")


def _check_grft(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
    axis = config.get("axis", "rows")
    modules = module_names(config)
    listed = set(modules)
    for name in tensors:
        if name.endswith(_GRFT_SUFFIXES) and name.rsplit(".", 1)[0] not in listed:
            raise _bad(f"tensor {name} belongs to no module listed in the config")
    for m in modules:
        if f"{m}.grft_indices" not in tensors:
            raise _bad(f"tensor {m}.grft_indices is missing")
        idx = tensors[f"{m}.grft_indices"]
        shape = _recorded_shape(config, m)
        _check_indices(f"{m}.grft_indices", idx, None if shape is None else shape[0 if axis == "rows" else 1])
        delta = _floating(tensors, f"{m}.grft_delta", 2)
        k = idx.numel()
        if (delta.shape[0] if axis == "rows" else delta.shape[1]) != k:
            raise _bad(f"tensor {m}.grft_delta has shape {tuple(delta.shape)}, not {k} {axis}")
        if shape is not None and tuple(delta.shape) != ((k, shape[1]) if axis == "rows" else (shape[0], k)):
            raise _bad(f"tensor {m}.grft_delta has shape {tuple(delta.shape)}; the {shape} weight differs")
        if f"{m}.grft_bias" in tensors:
            _floating(tensors, f"{m}.grft_bias", 1)


def _check_gps(tensors: Mapping[str, Tensor]) -> None:
    for name, idx in tensors.items():
        if not name.endswith(".gps_indices"):
            continue
        m = name.removesuffix(".gps_indices")
        if idx.dtype not in _INDEX_DTYPES or idx.dim() != 2:
            raise _bad(f"tensor {name} must be a 2-D int32 tensor, not {idx.dtype} {tuple(idx.shape)}")
        if idx.numel() and int(idx.min()) < 0:
            raise _bad(f"tensor {name} holds a negative index")
        values = _floating(tensors, f"{m}.gps_values", 2)
        if values.shape != idx.shape:
            raise _bad(f"tensor {m}.gps_values has shape {tuple(values.shape)}, not {tuple(idx.shape)}")


def _weight_module(model: nn.Module, name: str) -> nn.Module:
    """The Linear or Conv2d named ``name``, seen through a wrapper (GRFT, serving or PEFT layer)."""
    if name == HEAD or name.startswith(HEAD + "."):
        raise AdapterError(f"module {name} is the task head, which carries no delta", param="modules")
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise AdapterError(f"the base model has no module {name}", param="modules") from exc
    inner = getattr(module, "base_layer", None)
    if isinstance(inner, nn.Module) and not isinstance(module, nn.Linear | nn.Conv2d):
        module = inner
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise AdapterError(
            f"module {name} is a {type(module).__name__}; only Linear and Conv2d take deltas", param="modules"
        )
    return module


def check_fits(config: Mapping[str, Any], tensors: Mapping[str, Tensor], model: nn.Module) -> None:
    """Check that a checked adapter (``check_adapter``) fits ``model``'s modules and head.

    Args:
        config: the adapter's config document (``Adapter.config``).
        tensors: its tensors (``Adapter.tensors``).
        model: a classifier of the adapter's base (wrapped layers are looked through).
    Raises:
        AdapterError: a module is missing or of another kind, an index is out of its range, a delta or
            bias has the wrong shape, or the head reads another number of features.
    """
    t, method = tensors, config.get("method")
    if method in GRFT_KINDS:
        axis = config.get("axis", "rows")
        for m in module_names(config):
            module = _weight_module(model, m)
            out_dim, in_dim = weight_matrix_shape(module)
            idx, delta = t[f"{m}.grft_indices"], t[f"{m}.grft_delta"]
            _check_indices(f"{m}.grft_indices", idx, out_dim if axis == "rows" else in_dim)
            k = idx.numel()
            expected = (k, in_dim) if axis == "rows" else (out_dim, k)
            if tuple(delta.shape) != expected:
                raise _bad(f"tensor {m}.grft_delta has shape {tuple(delta.shape)}; {m} needs {expected}")
            bias = t.get(f"{m}.grft_bias")
            if bias is not None and getattr(module, "bias", None) is None:
                raise _bad(f"tensor {m}.grft_bias changes a bias that {m} does not have")
            if bias is not None and tuple(bias.shape) != (out_dim,):
                raise _bad(f"tensor {m}.grft_bias has shape {tuple(bias.shape)}; {m} needs ({out_dim},)")
    head = getattr(model, HEAD, None)
    weight = t.get(f"{HEAD}.weight")
    features = getattr(head, "in_features", None)
    if method != "full" and weight is not None and features is not None:
        if int(weight.shape[1]) != int(features):
            raise _bad(f"head reads {int(weight.shape[1])} features; the base model gives {features}")
