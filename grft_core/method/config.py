"""The typed training configuration.

``GRFTConfig`` is the single description of a training run, whatever the method. It validates itself
on construction and names the field and the bound in every error, so a CLI flag or an API field that
is out of range is reported as such rather than failing deep inside the trainer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from grft_core.errors import ConfigError
from grft_core.method.layers import Axis

Method = Literal["grft", "masked_dense", "full", "linear_probe", "lora", "gps"]
SelectionLoss = Literal["scl", "ce"]
#: ``random`` is the control: the same k per matrix, chosen by a seeded draw instead of by gradients.
SelectionStrategy = Literal["gradient", "random"]
ScoreMode = Literal["accumulated", "per_batch"]
Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]

MAX_K = 65_536


@dataclass
class GRFTConfig:
    """Every knob of a fine-tuning run; validated on construction.

    Raises:
        ConfigError: a field is out of bounds; ``param`` is the field's name.
    """

    method: Method = "grft"
    # --- selection (grft, masked_dense) ---
    k: int | dict[str, int] = 1
    axis: Axis = "rows"
    selection_loss: SelectionLoss = "scl"
    selection_samples: int | None = None
    selection_batch_size: int = 32
    score_mode: ScoreMode = "accumulated"
    selection_strategy: SelectionStrategy = "gradient"
    # 0.07 is the SupCon / GPS temperature: low enough that same-class pairs dominate the softmax.
    scl_temperature: float = 0.07
    include_depthwise: bool = False
    include_patch_embed: bool = True
    train_bias: bool = True
    # --- regularisation ---
    l2_lambda: float = 1e-4
    l2_layers: int | None = None
    # --- optimisation ---
    epochs: int = 3
    batch_size: int = 32
    grad_accum_steps: int = 1
    lr: float = 1e-3
    head_lr: float | None = None
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    # --- baselines ---
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # GPS-style baseline: the entries of each row with the largest gradient magnitude train (masked).
    gps_per_row: int = 1
    # --- inputs and hardware ---
    image_size: int | None = None
    max_length: int | None = None
    val_fraction: float = 0.1
    precision: Precision = "auto"
    device: Device = "auto"
    checkpoint_every: int = 0
    num_workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_literal("method", Method)
        self._check_literal("axis", Axis)
        self._check_literal("selection_loss", SelectionLoss)
        self._check_literal("score_mode", ScoreMode)
        self._check_literal("selection_strategy", SelectionStrategy)
        self._check_literal("precision", Precision)
        self._check_literal("device", Device)
        if isinstance(self.k, Mapping):
            if not self.k:
                raise ConfigError("k must not be an empty map", param="k")
            for name, value in self.k.items():
                _int_in("k", value, 1, MAX_K, label=f"k[{name!r}]")
        else:
            _int_in("k", self.k, 1, MAX_K)
        if self.selection_samples is not None:
            _int_in("selection_samples", self.selection_samples, 2, 10_000_000)
        _int_in("selection_batch_size", self.selection_batch_size, 2, 4096)
        _float_in("scl_temperature", self.scl_temperature, 1e-3, 10.0)
        _float_in("l2_lambda", self.l2_lambda, 0.0, 1e3)
        if self.l2_layers is not None:
            _int_in("l2_layers", self.l2_layers, 0, 10_000)
        _int_in("epochs", self.epochs, 1, 1000)
        _int_in("batch_size", self.batch_size, 1, 4096)
        _int_in("grad_accum_steps", self.grad_accum_steps, 1, 1024)
        _float_in("lr", self.lr, 1e-9, 10.0)
        if self.head_lr is not None:
            _float_in("head_lr", self.head_lr, 1e-9, 10.0)
        _float_in("warmup_ratio", self.warmup_ratio, 0.0, 0.9)
        _float_in("max_grad_norm", self.max_grad_norm, 0.0, 1e6)
        _int_in("seed", self.seed, 0, 2**31 - 1)
        _int_in("lora_rank", self.lora_rank, 1, 4096)
        _float_in("lora_alpha", self.lora_alpha, 1e-6, 1e6)
        _int_in("gps_per_row", self.gps_per_row, 1, MAX_K)
        if self.image_size is not None:
            _int_in("image_size", self.image_size, 8, 1024)
        if self.max_length is not None:
            _int_in("max_length", self.max_length, 4, 8192)
        _float_in("val_fraction", self.val_fraction, 0.01, 0.9)
        _int_in("checkpoint_every", self.checkpoint_every, 0, 10_000_000)
        _int_in("num_workers", self.num_workers, 0, 64)

    def _check_literal(self, name: str, kind: Any) -> None:
        allowed = get_args(kind)
        value = getattr(self, name)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{name} must be one of {choices} (got {value!r})", param=name)

    def k_for(self, module_name: str) -> int:
        """The ``k`` of one module: the map's entry (exact name or a dotted suffix), else the default.

        Args:
            module_name: the module's qualified name in the model.
        Returns:
            how many rows or columns to select in that module; 0 if a map is given and names it not.
        """
        if not isinstance(self.k, Mapping):
            return self.k
        if module_name in self.k:
            return self.k[module_name]
        for name, value in self.k.items():
            if module_name.endswith("." + name) or name == "*":
                return value
        return 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GRFTConfig:
        """Build a config from a mapping, rejecting unknown keys.

        Raises:
            ConfigError: an unknown key, or a value out of bounds.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown config field {key!r}", param=str(key))
        return cls(**dict(data))

    def replace(self, **changes: Any) -> GRFTConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _int_in(name: str, value: Any, lo: int, hi: int, *, label: str | None = None) -> None:
    label = label or name
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{label} must be an integer (got {value!r})", param=name)
    if not lo <= value <= hi:
        raise ConfigError(f"{label} must be between {lo} and {hi} (got {value})", param=name)


def _float_in(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number (got {value!r})", param=name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo:g} and {hi:g} (got {value})", param=name)
