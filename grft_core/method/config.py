"""The typed training configuration.

``GRFTConfig`` is the single description of a training run, whatever the method: every field of the
options models in ``options.py`` at once, plus the method. It validates itself on construction and
names the field and the bound in every error, so a CLI flag or an API field that is out of range is
reported as such rather than failing deep inside the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from grft_core.method.options import (
    MAX_K,
    Device,
    FullOptions,
    GpsOptions,
    GrftOptions,
    LinearProbeOptions,
    LoraOptions,
    Options,
    Precision,
    RunOptions,
    ScoreMode,
    SelectionLoss,
    SelectionStrategy,
    TrainingOptions,
)

Method = Literal["grft", "masked_dense", "full", "linear_probe", "lora", "gps"]

#: The options model of each method: the fields that mean something to it besides ``TrainingOptions``.
METHOD_OPTIONS: dict[str, type[Options]] = {
    "grft": GrftOptions,
    "masked_dense": GrftOptions,
    "gps": GpsOptions,
    "lora": LoraOptions,
    "full": FullOptions,
    "linear_probe": LinearProbeOptions,
}
# Fields of older configs (adapters and job rows keep them) that no longer mean anything.
_RETIRED = ("num_workers", "extra")

__all__ = [
    "MAX_K",
    "METHOD_OPTIONS",
    "Device",
    "GRFTConfig",
    "Method",
    "Precision",
    "ScoreMode",
    "SelectionLoss",
    "SelectionStrategy",
]


class GRFTConfig(
    GrftOptions, GpsOptions, LoraOptions, FullOptions, LinearProbeOptions, TrainingOptions, RunOptions
):
    """Every knob of a fine-tuning run; validated on construction, immutable (``replace`` for a copy).

    Raises:
        ConfigError: a field is out of bounds, of the wrong type, or unknown; ``param`` is its name.
    """

    method: Method = Field(
        default="grft", description="What trains: grft, its masked-dense reference, or a baseline."
    )

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
        """A JSON-serialisable copy of every field, under the fields' own names."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GRFTConfig:
        """Build a config from a mapping (field names, or their public API names), rejecting unknown keys.

        Keys that older versions wrote and that no longer mean anything are dropped, so saved adapters
        and stored jobs keep loading.

        Raises:
            ConfigError: an unknown key, or a value out of bounds.
        """
        return cls.model_validate({k: v for k, v in data.items() if k not in _RETIRED})

    def replace(self, **changes: Any) -> GRFTConfig:
        """A validated copy with some fields changed."""
        return self.model_validate({**self.to_dict(), **changes})
