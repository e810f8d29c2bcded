"""Every hyperparameter, declared once: its type, bounds, default and description.

Each method has its own options model, the way PEFT gives each tuner its own config: ``GrftOptions``
(GRFT and its masked-dense reference), ``GpsOptions``, ``LoraOptions``, ``FullOptions`` and
``LinearProbeOptions``. ``TrainingOptions`` holds what every method shares, ``RunOptions`` how and where
a run executes. ``GRFTConfig`` (``config.py``) is all of them at once. The service's request schema and
the command line derive their fields from these declarations; nothing else states a bound.

The models are strict: ``"4"`` is not 4 and ``true`` is not 1 (an integer is still a valid float). A bad
value raises ``ConfigError`` naming the field and its bounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from grft_core.errors import ConfigError
from grft_core.method.layers import Axis

SelectionLoss = Literal["scl", "ce"]
#: ``random`` is the control: the same k per matrix, chosen by a seeded draw instead of by gradients;
#: ``magnitude`` is the data-free alternative: the rows (columns) with the largest pre-trained norm.
SelectionStrategy = Literal["gradient", "random", "magnitude"]
ScoreMode = Literal["accumulated", "per_batch"]
Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]
#: Hyperparameters a run may be asked to choose itself (``grft_core.method.autotune``).
AutoName = Literal["lr", "epochs", "batch_size"]

MAX_K = 65_536
#: How many rows (or columns) of one matrix train.
KCount = Annotated[int, Ge(1), Le(MAX_K)]
#: A seed for every random draw of a run (torch, data order, selection sample).
Seed = Annotated[int, Ge(0), Le(2**31 - 1)]

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
_TYPE_NAMES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a map",
}


def bounds(metadata: Sequence[Any]) -> tuple[str, str] | None:
    """The lower and upper bound among a field's constraints, as written in messages; ``None`` if the
    field is not bounded on both sides."""
    lo = next((m.ge if isinstance(m, Ge) else m.gt for m in metadata if isinstance(m, Ge | Gt)), None)
    hi = next((m.le if isinstance(m, Le) else m.lt for m in metadata if isinstance(m, Le | Lt)), None)
    if lo is None or hi is None:
        return None
    return _written(lo), _written(hi)


def _written(bound: Any) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def describe(error: ErrorDetails, label: str, metadata: Sequence[Any], annotation: Any = None) -> str:
    """One sentence for one validation error: the field, what it must be, and the value given.

    Args:
        error: a pydantic error of that field.
        label: how to name the field (``k['qkv']`` for an entry of a map).
        metadata: the field's constraints (``Ge``/``Le``/…), read for the bounds to quote.
        annotation: the field's type, read for the allowed values of a ``Literal``.
    """
    kind, value = error["type"], error.get("input")
    if kind in _RANGE_ERRORS and (lo_hi := bounds(metadata)) is not None:
        return f"{label} must be between {lo_hi[0]} and {lo_hi[1]} (got {value!r})"
    if kind == "literal_error":
        choices = ", ".join(repr(c) for c in literal_choices(annotation))
        return f"{label} must be one of {choices} (got {value!r})"
    if kind in _TYPE_NAMES:
        return f"{label} must be {_TYPE_NAMES[kind]} (got {value!r})"
    return f"{label}: {error['msg']}"


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` field (``Optional`` unwrapped); empty for other types."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(c for arg in get_args(annotation) for c in literal_choices(arg))


def _k_kind(value: Any) -> str:
    return "map" if isinstance(value, Mapping) else "count"


def _one_k_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Report a bad ``k`` as one error on ``k`` itself, in words, whichever of its two forms was meant."""
    try:
        return handler(value)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = error["loc"][1:]  # past the "count" / "map" tag
        if error["type"] == "too_short":
            message = "k must not be an empty map"
        elif where and len(where) == 1:
            message = describe(error, f"k[{where[0]!r}]", get_args(KCount)[1:])
        elif where:
            message = f"k's keys must be module names (got {error.get('input')!r})"
        else:
            message = describe(error, "k", get_args(KCount)[1:])
        raise PydanticCustomError("k_value", "{message}", {"message": message}) from None


#: ``k`` rows per matrix, or a map from module name (exact, dotted suffix, or ``*``) to k.
KSpec = Annotated[
    Annotated[KCount, Tag("count")]
    | Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=256)], KCount],
        Field(min_length=1, max_length=1024),
        Tag("map"),
    ],
    Discriminator(_k_kind),
    WrapValidator(_one_k_error),
]


def public_name(name: str, info: FieldInfo) -> str:
    """The field's name in the fine-tuning HTTP API (OpenAI's where one exists), else its own.

    A field with a public name declares it as its ``serialization_alias`` and accepts both names.
    """
    return info.serialization_alias or name


class Options(BaseModel):
    """Base of every options model: strict, closed, immutable; errors are ``ConfigError``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _as_config_error(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            raise config_error(cls, exc) from None


def config_error(model: type[BaseModel], exc: ValidationError) -> ConfigError:
    """The first error of ``exc`` as a ``ConfigError`` whose ``param`` is the field's name."""
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else None
    fields = model.model_fields
    # A field given under its public name is reported under its own name.
    name = next((n for n, f in fields.items() if name in (n, f.serialization_alias)), name)
    if error["type"] == "extra_forbidden":
        return ConfigError(f"unknown config field {name!r}", param=name)
    if name is None or name not in fields:
        return ConfigError(f"config: {error['msg']}", param=name)
    if error["type"] == "k_value":
        return ConfigError(error["msg"], param=name)
    info = fields[name]
    return ConfigError(describe(error, name, info.metadata, info.annotation), param=name)


class RunOptions(Options):
    """How and where a run executes; the service sets these, never its callers."""

    seed: Seed = Field(
        default=0, description="Seed of every random draw: initialisation, data order, selection."
    )
    device: Device = Field(default="auto", description="Where to train: cuda when available under auto.")
    checkpoint_every: int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="Write a resumable checkpoint every N optimizer steps (0: never).",
    )
    auto: list[AutoName] = Field(
        default_factory=list,
        max_length=3,
        description="Hyperparameters the run chooses itself before training (lr, epochs, batch_size).",
    )


class TrainingOptions(Options):
    """The optimisation and input knobs every method shares."""

    epochs: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Passes over the training data.",
        validation_alias=AliasChoices("epochs", "n_epochs"),
        serialization_alias="n_epochs",
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Examples per forward pass.")
    grad_accum_steps: int = Field(
        default=1, ge=1, le=1024, description="Batches whose gradients make one optimizer step."
    )
    lr: float = Field(
        default=1e-3,
        ge=1e-9,
        le=10.0,
        description="Adam learning rate of the trained weights.",
        validation_alias=AliasChoices("lr", "learning_rate"),
        serialization_alias="learning_rate",
    )
    head_lr: float | None = Field(
        default=None,
        ge=1e-9,
        le=10.0,
        description="Learning rate of the new classification head (default: lr).",
        validation_alias=AliasChoices("head_lr", "head_learning_rate"),
        serialization_alias="head_learning_rate",
    )
    # 0.1: long enough for Adam's second-moment estimates to settle before the full rate.
    warmup_ratio: float = Field(
        default=0.1,
        ge=0.0,
        le=0.9,
        description="Share of the steps spent warming the learning rate up linearly.",
        validation_alias=AliasChoices("warmup_ratio", "warmup"),
        serialization_alias="warmup",
    )
    max_grad_norm: float = Field(
        default=1.0, ge=0.0, le=1e6, description="Clip the gradient norm to this (0: no clipping)."
    )
    precision: Precision = Field(
        default="auto", description="bf16 autocast on CUDA under auto, fp32 elsewhere."
    )
    image_size: int | None = Field(
        default=None, ge=8, le=1024, description="Square input size in pixels (default: the model's)."
    )
    max_length: int | None = Field(
        default=None, ge=4, le=8192, description="Token limit of text inputs (default: min(model's, 256))."
    )
    val_fraction: float = Field(
        default=0.1,
        ge=0.01,
        le=0.9,
        description="Share of the training data held out when no validation data is given.",
    )


class TargetOptions(Options):
    """Which weight matrices a method may adapt."""

    include_patch_embed: bool = Field(
        default=True, description="Adapt the patch-embedding (or stem) convolution too."
    )


class SparseOptions(TargetOptions):
    """Shared by the methods that train a gradient-selected subset of each matrix (GRFT, GPS)."""

    include_depthwise: bool = Field(default=False, description="Adapt depthwise convolutions too.")
    train_bias: bool = Field(default=True, description="Train the biases of the adapted matrices.")
    l2_lambda: float = Field(
        default=1e-4, ge=0.0, le=1e3, description="λ of the L2 pull toward the pre-trained weights."
    )
    l2_layers: int | None = Field(
        default=None, ge=0, le=10_000, description="Regularise only the last L blocks (default: all)."
    )
    selection_loss: SelectionLoss = Field(
        default="scl", description="Loss of the selection pass: supervised contrastive or cross-entropy."
    )
    selection_samples: int | None = Field(
        default=None,
        ge=2,
        le=10_000_000,
        description="Training examples the selection pass reads (default: all).",
    )
    selection_batch_size: int = Field(
        default=32, ge=2, le=4096, description="Batch size of the selection pass."
    )
    score_mode: ScoreMode = Field(
        default="accumulated", description="Score the accumulated gradient, or per-batch squared sums."
    )
    # 0.07 is the SupCon / GPS temperature: low enough that same-class pairs dominate the softmax.
    scl_temperature: float = Field(
        default=0.07, ge=1e-3, le=10.0, description="Temperature of the contrastive selection loss."
    )


class GrftOptions(SparseOptions):
    """GRFT (and its masked-dense reference): the top-k rows or columns of each matrix train."""

    # 8: in the study (bench/RESULTS.md, "Accuracy study") accuracy on MobileNetV2 rose steeply from
    # k = 1 to 8; the adapter stays about half of LoRA r=8's bytes.
    k: KSpec = Field(
        default=8,
        description="Rows (or columns) per matrix, or a map from module name (or suffix, or *) to k.",
    )
    axis: Axis = Field(
        default="rows", description="Select rows (output features) or columns (input features)."
    )
    selection_strategy: SelectionStrategy = Field(
        default="gradient",
        description=(
            "Choose by gradient scores, by a seeded random draw (the control), or by the pre-trained "
            "weights' row (column) norms."
        ),
    )


class GpsOptions(SparseOptions):
    """The GPS-style baseline: the entries of each row with the largest gradient train (masked)."""

    gps_per_row: int = Field(default=1, ge=1, le=MAX_K, description="Entries per row that train.")


class LoraOptions(TargetOptions):
    """LoRA through PEFT, on the same eligible matrices."""

    lora_rank: int = Field(default=8, ge=1, le=4096, description="Rank of each LoRA update.")
    lora_alpha: float = Field(
        default=16.0, ge=1e-6, le=1e6, description="LoRA scaling numerator (scale = alpha / rank)."
    )


class FullOptions(Options):
    """Full fine-tuning: every weight trains; it has no options of its own."""


class LinearProbeOptions(Options):
    """Linear probing: only the new head trains; it has no options of its own."""


def check_option(name: str, value: Any) -> None:
    """Validate one value against its field's declaration, as ``GRFTConfig`` would.

    Raises:
        ConfigError: the value is out of bounds or of the wrong type; ``param`` is ``name``.
        KeyError: no options model declares ``name``.
    """
    for model in (RunOptions, TrainingOptions, GrftOptions, GpsOptions, LoraOptions):
        if name in model.model_fields:
            model.model_validate({name: value})
            return
    raise KeyError(name)
