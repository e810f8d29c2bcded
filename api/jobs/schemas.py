"""Request and response shapes of ``/v1/fine_tuning/jobs``, following OpenAI's fine-tuning API.

GRFT's own knobs travel in ``method: {"type": "grft", "grft": {"hyperparameters": {...}}}``; the
legacy top-level ``hyperparameters`` (``n_epochs``, ``batch_size``, ``learning_rate_multiplier``) are
accepted too. ``"auto"`` means the library's default.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from api.files.schemas import unix
from api.pagination import CursorPage
from domain.jobs import models
from grft_core.method import Axis, GRFTConfig, Precision, ScoreMode, SelectionLoss

MethodType = Literal["grft", "full", "linear_probe", "lora", "supervised"]
METHOD_TYPES: tuple[MethodType, ...] = ("grft", "full", "linear_probe", "lora", "supervised")
# API names that differ from GRFTConfig's; every other hyperparameter keeps its name.
RENAMED = {
    "n_epochs": "epochs",
    "learning_rate": "lr",
    "head_learning_rate": "head_lr",
    "warmup": "warmup_ratio",
}
API_NAME = {config: api for api, config in RENAMED.items()}
# OpenAI's "supervised" is ordinary fine-tuning of every weight.
CONFIG_METHOD = {
    "grft": "grft",
    "full": "full",
    "linear_probe": "linear_probe",
    "lora": "lora",
    "supervised": "full",
}
# Config fields that the service or the worker sets, never the caller.
NOT_SHOWN = ("method", "seed", "device", "num_workers", "checkpoint_every", "extra")
# OpenAI's learning_rate_multiplier scales this.
DEFAULT_LR = GRFTConfig().lr
JobStatus = Literal["validating_files", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


def _auto_is_default(value: Any) -> Any:
    return None if value == "auto" else value


# "auto" or a bounded number; "auto" becomes None, the library's default.
AutoEpochs = Annotated[Annotated[int, Field(ge=1, le=1000)] | None, BeforeValidator(_auto_is_default)]
AutoBatchSize = Annotated[Annotated[int, Field(ge=1, le=4096)] | None, BeforeValidator(_auto_is_default)]
AutoMultiplier = Annotated[Annotated[float, Field(gt=0, le=1000)] | None, BeforeValidator(_auto_is_default)]
ModuleName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LegacyHyperparameters(_Request):
    n_epochs: AutoEpochs = None
    batch_size: AutoBatchSize = None
    learning_rate_multiplier: AutoMultiplier = None


class Hyperparameters(LegacyHyperparameters):
    """Every knob of a run. Bounds mirror ``GRFTConfig``, which validates the result once more."""

    # k rows (or columns) per matrix, or a map from module name (or dotted suffix, or "*") to k.
    k: int | Annotated[dict[ModuleName, int], Field(min_length=1, max_length=1024)] | None = None
    axis: Axis | None = None
    selection_loss: SelectionLoss | None = None
    selection_samples: Annotated[int, Field(ge=2, le=10_000_000)] | None = None
    selection_batch_size: Annotated[int, Field(ge=2, le=4096)] | None = None
    score_mode: ScoreMode | None = None
    scl_temperature: Annotated[float, Field(ge=1e-3, le=10.0)] | None = None
    include_depthwise: bool | None = None
    include_patch_embed: bool | None = None
    train_bias: bool | None = None
    l2_lambda: Annotated[float, Field(ge=0.0, le=1e3)] | None = None
    l2_layers: Annotated[int, Field(ge=0, le=10_000)] | None = None
    grad_accum_steps: Annotated[int, Field(ge=1, le=1024)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=10.0)] | None = None
    head_learning_rate: Annotated[float, Field(gt=0, le=10.0)] | None = None
    warmup: Annotated[float, Field(ge=0.0, le=0.9)] | None = None
    max_grad_norm: Annotated[float, Field(ge=0.0, le=1e6)] | None = None
    lora_rank: Annotated[int, Field(ge=1, le=4096)] | None = None
    lora_alpha: Annotated[float, Field(gt=0, le=1e6)] | None = None
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None
    max_length: Annotated[int, Field(ge=4, le=8192)] | None = None
    val_fraction: Annotated[float, Field(ge=0.01, le=0.9)] | None = None
    precision: Precision | None = None


class MethodParams(_Request):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(_Request):
    """``{"type": t, t: {"hyperparameters": {...}}}``; ``supervised`` is plain full fine-tuning."""

    type: MethodType
    grft: MethodParams | None = None
    full: MethodParams | None = None
    linear_probe: MethodParams | None = None
    lora: MethodParams | None = None
    supervised: MethodParams | None = None

    @model_validator(mode="after")
    def _only_its_own_params(self) -> Method:
        for name in METHOD_TYPES:
            if name != self.type and getattr(self, name) is not None:
                raise ValueError(f"method.{name} is given but method.type is {self.type!r}")
        return self

    @property
    def hyperparameters(self) -> Hyperparameters:
        params: MethodParams | None = getattr(self, self.type)
        return params.hyperparameters if params is not None else Hyperparameters()


class JobCreate(_Request):
    model: str = Field(min_length=1, max_length=128)
    training_file: str = Field(min_length=1, max_length=2048, description="a file id or a dataset URI")
    validation_file: str | None = Field(default=None, min_length=1, max_length=2048)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    hyperparameters: LegacyHyperparameters | None = None
    method: Method | None = None


# --- responses ------------------------------------------------------------------------------------


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None

    @classmethod
    def of(cls, error: dict[str, Any] | None) -> JobError | None:
        if not error:
            return None
        param = error.get("param")
        return cls(
            code=str(error.get("code", "error")),
            message=str(error.get("message", "")),
            param=str(param) if param is not None else None,
        )


class JobHyperparameters(BaseModel):
    n_epochs: int | None
    batch_size: int | None
    learning_rate_multiplier: float | None


class Progress(BaseModel):
    steps_completed: int
    total_steps: int | None
    seconds_remaining: float | None


class Job(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    status: JobStatus
    validation_file: str | None
    training_file: str
    hyperparameters: JobHyperparameters
    trained_tokens: int | None = None
    error: JobError | None
    seed: int
    metadata: dict[str, str] | None
    method: dict[str, Any]
    estimated_finish: int | None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    user_provided_suffix: str | None
    progress: Progress
    trainable_params: int | None
    adapter_id: str | None

    @classmethod
    def of(cls, job: models.Job) -> Job:
        """The OpenAI job object; ``method`` shows the stored config under the request's names."""
        config = job.method or {}
        method_type = config.get("method", "grft")
        shown = {API_NAME.get(k, k): v for k, v in config.items() if k not in NOT_SHOWN}
        lr = config.get("lr")
        estimated_finish = None
        if job.status == "running" and job.seconds_remaining is not None:
            estimated_finish = int(time.time() + job.seconds_remaining)
        return cls(
            id=job.id,
            created_at=unix(job.created_at),
            finished_at=unix(job.finished_at) if job.finished_at else None,
            model=job.model,
            fine_tuned_model=job.adapter_id if job.status == "succeeded" else None,
            organization_id=job.tenant_id,
            status=job.status,  # type: ignore[arg-type]
            validation_file=job.validation_file,
            training_file=job.training_file,
            hyperparameters=JobHyperparameters(
                n_epochs=config.get("epochs"),
                batch_size=config.get("batch_size"),
                learning_rate_multiplier=lr / DEFAULT_LR if isinstance(lr, int | float) else None,
            ),
            error=JobError.of(job.error),
            seed=job.seed,
            metadata=job.metadata_ or {},
            method={"type": method_type, method_type: {"hyperparameters": shown}},
            estimated_finish=estimated_finish,
            user_provided_suffix=job.suffix,
            progress=Progress(
                steps_completed=job.steps_completed,
                total_steps=job.total_steps,
                seconds_remaining=job.seconds_remaining,
            ),
            trainable_params=job.trainable_params,
            adapter_id=job.adapter_id,
        )


class JobList(CursorPage[Job]):
    pass


class JobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: models.JobEvent) -> JobEvent:
        return cls(
            id=event.id,
            created_at=unix(event.created_at),
            level=event.level,
            message=event.message,
            type=event.type,
            data=event.data,
        )


class JobEventList(CursorPage[JobEvent]):
    pass


class Checkpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]

    @classmethod
    def of(cls, checkpoint: models.JobCheckpoint) -> Checkpoint:
        return cls(
            id=checkpoint.id,
            created_at=unix(checkpoint.created_at),
            fine_tuned_model_checkpoint=f"{checkpoint.job_id}:ckpt-step-{checkpoint.step}",
            fine_tuning_job_id=checkpoint.job_id,
            step_number=checkpoint.step,
            metrics={"step": checkpoint.step, **(checkpoint.metrics or {})},
        )


class CheckpointList(CursorPage[Checkpoint]):
    pass


class MetricPoint(BaseModel):
    step: int | None = None
    epoch: float | None = None
    value: float


# Series name -> points, e.g. {"train_loss": [{"step": 10, "value": 0.7}], "val_accuracy": [...]}.
Metrics = dict[str, list[MetricPoint]]
