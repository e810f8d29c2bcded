"""One entry of the model store: ``ModelSpec``, and how an entry's files are finished.

Shared by the built-in entries (``grft_core.models.builtins``) and the entries ``ModelRegistry`` adds:
the weights are written last (their presence marks the entry complete), backbone only, and the spec
records their fingerprint.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from grft_core.errors import ConfigError, ModelNotFound
from grft_core.models.classifier import create_transformers_backbone, fit_transformers_state
from grft_core.models.serialization import fingerprint_state_dict, load_safetensors, save_safetensors_atomic

WEIGHTS_FILE = "model.safetensors"


@dataclass
class ModelSpec:
    """One registry entry. Paths are absolute when the spec comes from a ``ModelRegistry``.

    Attributes:
        name: registry name.
        family: ``"timm"`` or ``"transformers"``.
        modality: ``"image"`` or ``"text"``.
        weights: path of the backbone safetensors file.
        fingerprint: ``fingerprint_state_dict`` of those weights.
        arch: timm architecture name (timm only).
        config_dir: folder with ``config.json`` and tokenizer files (transformers only).
        timm_kwargs: extra ``timm.create_model`` arguments (model sizes, ``pretrained_cfg_overlay``).
        description: free text.
        num_params: backbone parameter count.
        kind: ``"classifier"`` (a backbone a task head is put on) or ``"causal_lm"`` (a whole language
            model, ``grft_core.models.causal``). Entries written before kinds existed are classifiers.
    """

    name: str
    family: Literal["timm", "transformers"]
    modality: Literal["image", "text"]
    weights: str
    fingerprint: str
    arch: str | None = None
    config_dir: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    num_params: int = 0
    kind: Literal["classifier", "causal_lm"] = "classifier"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable copy of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Build a spec from ``to_dict`` output.

        Raises:
            ConfigError: a required field is missing, or family/modality has an unknown value.
        """
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        try:
            spec = cls(**known)
        except TypeError as exc:
            raise ConfigError(f"malformed model spec: {exc}", param="model") from exc
        if spec.family not in ("timm", "transformers") or spec.modality not in ("image", "text"):
            raise ConfigError(f"model spec {spec.name!r}: bad family/modality", param="model")
        if spec.kind not in ("classifier", "causal_lm"):
            raise ConfigError(f"model spec {spec.name!r}: bad kind {spec.kind!r}", param="model")
        return spec


def package_dir(package: str, model: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"built-in model {model!r} needs the package {package!r}", param="model")
    return Path(next(iter(spec.submodule_search_locations)))


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def finish_entry(folder: Path, state: Mapping[str, Tensor], model: nn.Module, **fields: Any) -> ModelSpec:
    """Write the weights last (their presence marks the entry complete) and describe the entry."""
    save_safetensors_atomic(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    return ModelSpec(
        weights=str(folder / WEIGHTS_FILE),
        fingerprint=fingerprint_state_dict(state),
        num_params=_num_params(model),
        **fields,
    )


def transformers_entry(folder: Path, weights: Path, **fields: Any) -> ModelSpec:
    """Load ``weights`` into the encoder described by ``folder/config.json`` and finish the entry."""
    with torch.random.fork_rng(devices=[]):
        model = create_transformers_backbone(folder)
    state = fit_transformers_state(load_safetensors(weights, param="weights"), model)
    fields.update(family="transformers", modality="text", config_dir=str(folder))
    return finish_entry(folder, state, model, **fields)
