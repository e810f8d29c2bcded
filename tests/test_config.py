"""GRFTConfig validates every field and names the field and the bound."""

from __future__ import annotations

import pytest

from grft_core.errors import ConfigError
from grft_core.method.config import GRFTConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k", 0, "k must be between 1 and 65536 (got 0)"),
        ("k", 2.5, "k must be an integer"),
        ("k", {}, "k must not be an empty map"),
        ("k", {"qkv": 0}, "k['qkv'] must be between 1"),
        ("axis", "diagonal", "axis must be one of 'rows', 'columns'"),
        (
            "method",
            "sgd",
            "method must be one of 'grft', 'masked_dense', 'full', 'linear_probe', 'lora', 'gps'",
        ),
        ("l2_lambda", -1e-4, "l2_lambda must be between 0 and 1000"),
        ("l2_lambda", float("nan"), "l2_lambda must be between"),
        ("lr", 0.0, "lr must be between"),
        ("epochs", 0, "epochs must be between 1 and 1000"),
        ("batch_size", 10_000, "batch_size must be between 1 and 4096"),
        ("selection_samples", 1, "selection_samples must be between 2"),
        ("selection_loss", "mse", "selection_loss must be one of 'scl', 'ce'"),
        ("warmup_ratio", 0.95, "warmup_ratio must be between 0 and 0.9"),
        ("epochs", True, "epochs must be an integer"),
        ("l2_layers", -1, "l2_layers must be between 0"),
    ],
)
def test_out_of_bounds_values_are_named(field, value, message):
    with pytest.raises(ConfigError) as err:
        GRFTConfig(**{field: value})
    assert message in err.value.message
    assert err.value.param == field


def test_unknown_field_is_rejected_by_from_dict():
    with pytest.raises(ConfigError, match="unknown config field 'kk'") as err:
        GRFTConfig.from_dict({"kk": 1})
    assert err.value.param == "kk"


def test_round_trip_through_dict():
    config = GRFTConfig(k={"qkv": 4, "*": 1}, axis="columns", l2_layers=2)
    assert GRFTConfig.from_dict(config.to_dict()) == config


def test_k_for_per_module_map():
    config = GRFTConfig(k={"attn.qkv": 4, "*": 1})
    assert config.k_for("backbone.blocks.0.attn.qkv") == 4
    assert config.k_for("backbone.blocks.0.mlp.fc1") == 1
    assert GRFTConfig(k={"qkv": 2}).k_for("backbone.blocks.0.mlp.fc1") == 0
    assert GRFTConfig(k=3).k_for("anything") == 3


def test_replace_validates():
    with pytest.raises(ConfigError):
        GRFTConfig().replace(k=-1)
