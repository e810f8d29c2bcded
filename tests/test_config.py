"""GRFTConfig and the per-method options validate every field strictly and name the field and the bound."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from grft_core.errors import ConfigError
from grft_core.method.config import METHOD_OPTIONS, GRFTConfig
from grft_core.method.options import (
    FullOptions,
    GpsOptions,
    GrftOptions,
    LinearProbeOptions,
    LoraOptions,
    RunOptions,
    TrainingOptions,
    check_option,
)


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


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k", "4", "k must be an integer (got '4')"),
        ("k", True, "k must be an integer (got True)"),
        ("k", {"qkv": "4"}, "k['qkv'] must be an integer"),
        ("lr", "0.1", "lr must be a number"),
        ("train_bias", 1, "train_bias must be true or false"),
        ("l2_lambda", True, "l2_lambda must be a number"),
    ],
)
def test_strict_types_are_not_coerced(field, value, message):
    with pytest.raises(ConfigError) as err:
        GRFTConfig(**{field: value})
    assert message in err.value.message
    assert err.value.param == field


def test_integers_are_valid_floats():
    config = GRFTConfig(l2_lambda=0, lr=1, warmup_ratio=0)
    assert (config.l2_lambda, config.lr, config.warmup_ratio) == (0.0, 1.0, 0.0)
    assert all(isinstance(v, float) for v in (config.l2_lambda, config.lr, config.warmup_ratio))


def test_old_dicts_with_retired_fields_still_load():
    # Adapters and job rows written before num_workers and extra were dropped carry them.
    old = {**GRFTConfig(k=2).to_dict(), "num_workers": 0, "extra": {}}
    config = GRFTConfig.from_dict(old)
    assert config.k == 2
    assert "num_workers" not in config.to_dict()
    assert "extra" not in config.to_dict()


def test_public_names_are_accepted_and_stored_under_field_names():
    config = GRFTConfig.from_dict({"n_epochs": 2, "learning_rate": 0.01, "warmup": 0.2})
    assert (config.epochs, config.lr, config.warmup_ratio) == (2, 0.01, 0.2)
    stored = config.to_dict()
    assert (stored["epochs"], stored["lr"], stored["warmup_ratio"]) == (2, 0.01, 0.2)
    assert "n_epochs" not in stored


def test_config_is_immutable_and_replace_returns_a_copy():
    config = GRFTConfig(k=2)
    with pytest.raises(ValidationError):
        config.k = 3  # type: ignore[misc]
    changed = config.replace(k=3, method="lora")
    assert (config.k, changed.k, changed.method) == (2, 3, "lora")


class TestMethodOptions:
    def test_the_config_is_every_method_options_at_once(self):
        declared = set(TrainingOptions.model_fields) | set(RunOptions.model_fields)
        for options in METHOD_OPTIONS.values():
            declared |= set(options.model_fields)
        assert set(GRFTConfig.model_fields) == declared | {"method"}

    def test_each_method_has_its_own_options(self):
        assert "k" in GrftOptions.model_fields
        assert "lora_rank" not in GrftOptions.model_fields
        assert "lora_rank" in LoraOptions.model_fields
        assert "k" not in LoraOptions.model_fields
        assert "gps_per_row" in GpsOptions.model_fields
        assert METHOD_OPTIONS["masked_dense"] is GrftOptions
        assert METHOD_OPTIONS["full"] is FullOptions
        assert not FullOptions.model_fields
        assert METHOD_OPTIONS["linear_probe"] is LinearProbeOptions

    def test_options_models_validate_like_the_config(self):
        with pytest.raises(ConfigError, match="unknown config field 'k'"):
            LoraOptions.model_validate({"k": 2})
        with pytest.raises(ConfigError, match=r"lora_rank must be between 1 and 4096 \(got 0\)"):
            LoraOptions(lora_rank=0)
        assert GrftOptions(k={"qkv": 4}).k == {"qkv": 4}

    def test_check_option_uses_the_declared_bounds(self):
        check_option("image_size", 32)
        with pytest.raises(ConfigError, match=r"image_size must be between 8 and 1024 \(got 4\)") as err:
            check_option("image_size", 4)
        assert err.value.param == "image_size"
        with pytest.raises(KeyError):
            check_option("no_such_option", 1)
