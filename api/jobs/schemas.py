"""Request and response shapes of ``/v1/fine_tuning/jobs``, following OpenAI's fine-tuning API.

GRFT's own knobs travel in ``method: {"type": "grft", "grft": {"hyperparameters": {...}}}``; the
legacy top-level ``hyperparameters`` (``n_epochs``, ``batch_size``, ``learning_rate_multiplier``) are
accepted too. ``"auto"`` means the library's default. Each method's hyperparameters are derived from
the library's options models (``grft_core.method.options``): their names, types, bounds, defaults and
descriptions are declared there once; OpenAI's names are those fields' public aliases.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo

from api.files.schemas import unix
from api.jobs.reporting import AUTO_FIELDS, JobHyperparameters, JobMetrics, Progress, with_auto
from api.pagination import CursorPage
from domain.jobs import models
from domain.jobs.integrations import MAX_INTEGRATIONS, Integration
from domain.jobs.model_ids import MAX_MODEL_ID, SUFFIX_PATTERN, checkpoint_model_id, fine_tuned_model_id
from domain.jobs.states import JobStatus
from grft_core.method import METHOD_OPTIONS, GRFTConfig, Options, TrainingOptions, public_name
from grft_core.method.options import Seed

MethodType = Literal["grft", "full", "linear_probe", "lora", "supervised"]
#: The library method each request method runs; OpenAI's "supervised" is full fine-tuning.
LIBRARY_METHOD: dict[MethodType, str] = {
    "grft": "grft",
    "full": "full",
    "linear_probe": "linear_probe",
    "lora": "lora",
    "supervised": "full",
}
# OpenAI's learning_rate_multiplier scales this.
DEFAULT_LR: float = GRFTConfig.model_fields["lr"].default
# The knobs that take "auto" (OpenAI's: the service picks them; see ``api.jobs.reporting``).
AUTO = tuple(AUTO_FIELDS)


MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Request):
    """Base of the request's hyperparameter models, whose fields are derived from the library's options.

    Strict like the options: ``"4"`` is not 4 and ``true`` is not 1 (a JSON integer is a valid float).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    # OpenAI's multiplier of the default learning rate; the only knob the library does not have.
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=1000)] | Literal["auto"] | None = None


def _optional(info: FieldInfo, public: str) -> tuple[Any, Any]:
    """The library field as an optional request field: same type and bounds, ``None`` meaning the
    library's default; the knobs of ``AUTO`` also take ``"auto"`` (the worker chooses)."""
    annotation: Any = info.annotation
    if info.metadata:
        annotation = Annotated.__class_getitem__((annotation, *info.metadata))  # type: ignore[attr-defined]
    if public in AUTO:
        annotation = annotation | Literal["auto"]
    annotation = Optional[annotation]  # noqa: UP045 - built at run time from a value
    return annotation, Field(default=None, description=info.description)


def hyperparameters_model(
    name: str, *sources: type[Options], only: tuple[str, ...] | None = None
) -> type[Hyperparameters]:
    """A request model with the fields of ``sources`` under their public names (all, or ``only``)."""
    fields: dict[str, Any] = {}
    for source in sources:
        for field_name, info in source.model_fields.items():
            public = public_name(field_name, info)
            if only is None or public in only:
                fields[public] = _optional(info, public)
    return create_model(name, __base__=Hyperparameters, __doc__=sources[-1].__doc__, **fields)


#: Each method's knobs: the shared training options plus its own.
HYPERPARAMETERS: dict[MethodType, type[Hyperparameters]] = {
    method: hyperparameters_model(
        f"{method.title().replace('_', '')}Hyperparameters", TrainingOptions, METHOD_OPTIONS[library]
    )
    for method, library in LIBRARY_METHOD.items()
}


class MethodBase(_Request):
    """``{"type": t, t: {"hyperparameters": {...}}}``; ``supervised`` is plain full fine-tuning."""

    type: MethodType

    @model_validator(mode="after")
    def _only_its_own_params(self) -> MethodBase:
        for name in LIBRARY_METHOD:
            if name != self.type and getattr(self, name, None) is not None:
                raise ValueError(f"method.{name} is given but method.type is {self.type!r}")
        return self

    @property
    def hyperparameters(self) -> Hyperparameters:
        params = getattr(self, self.type, None)
        if params is None:
            return HYPERPARAMETERS[self.type]()
        hyperparameters: Hyperparameters = params.hyperparameters
        return hyperparameters


def _method_model() -> type[MethodBase]:
    params: dict[str, Any] = {}
    for method, model in HYPERPARAMETERS.items():
        title = model.__name__.removesuffix("Hyperparameters")
        holder = create_model(
            f"{title}Method", __base__=_Request, hyperparameters=(model, Field(default_factory=model))
        )
        params[method] = (Optional[holder], None)  # noqa: UP045 - built at run time from a value
    return create_model("Method", __base__=MethodBase, **params)


if TYPE_CHECKING:
    LegacyHyperparameters = Hyperparameters
    Method = MethodBase
else:
    # OpenAI's top-level hyperparameters.
    LegacyHyperparameters = hyperparameters_model(
        "LegacyHyperparameters", TrainingOptions, only=("n_epochs", "batch_size")
    )
    Method = _method_model()


class JobCreate(_Request):
    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_ID,
        description=(
            "A base model, or a fine-tuned model or checkpoint of yours to continue from "
            "(``ft:…``, ``ft:…:ckpt-step-N``, ``ftjob-…:ckpt-step-N`` or its ``adapter-…`` id)"
        ),
    )
    training_file: str = Field(min_length=1, max_length=2048, description="a file id or a dataset URI")
    validation_file: str | None = Field(default=None, min_length=1, max_length=2048)
    seed: Seed | None = None
    suffix: str | None = Field(
        default=None,
        max_length=64,
        pattern=SUFFIX_PATTERN,
        description="Up to 64 letters, digits, '-' and '_'; part of the fine-tuned model id",
    )
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    hyperparameters: LegacyHyperparameters | None = None
    method: Method | None = None
    # Experiment trackers (OpenAI's wandb shape, and mlflow): domain.jobs.integrations.
    integrations: list[Integration] | None = Field(default=None, max_length=MAX_INTEGRATIONS)


def shown_hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config's knobs for its method, under their public names (what the request used)."""
    method = config.get("method", "grft")
    options = METHOD_OPTIONS.get(method, Options)
    shown: dict[str, Any] = {}
    for source in (TrainingOptions, options):
        for name, info in source.model_fields.items():
            if name in config:
                shown[public_name(name, info)] = config[name]
    return shown


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
        shown = with_auto(shown_hyperparameters(config), job)
        estimated_finish = None
        if job.status == JobStatus.RUNNING and job.seconds_remaining is not None:
            estimated_finish = int(time.time() + job.seconds_remaining)
        return cls(
            id=job.id,
            created_at=unix(job.created_at),
            finished_at=unix(job.finished_at) if job.finished_at else None,
            model=str((job.init_from or {}).get("model") or job.model),
            fine_tuned_model=fine_tuned_model_id(job) if job.status == JobStatus.SUCCEEDED else None,
            result_files=list(job.result_files or []),
            trained_tokens=job.trained_tokens,
            organization_id=job.tenant_id,
            status=JobStatus(job.status),
            validation_file=job.validation_file,
            training_file=job.training_file,
            hyperparameters=JobHyperparameters.of(job),
            error=JobError.of(job.error),
            seed=job.seed,
            metadata=job.metadata_ or {},
            method={"type": method_type, method_type: {"hyperparameters": shown}},
            estimated_finish=estimated_finish,
            user_provided_suffix=job.suffix,
            progress=Progress.of(job),
            trainable_params=job.trainable_params,
            adapter_id=job.adapter_id,
            integrations=list(job.integrations or []),
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
    def of(cls, checkpoint: models.JobCheckpoint, job: models.Job) -> Checkpoint:
        return cls(
            id=checkpoint.id,
            created_at=unix(checkpoint.created_at),
            fine_tuned_model_checkpoint=checkpoint_model_id(job, checkpoint.step),
            fine_tuning_job_id=checkpoint.job_id,
            step_number=checkpoint.step,
            metrics=openai_metrics(checkpoint.step, checkpoint.metrics or {}),
        )


#: Our metric names and OpenAI's. Our validation runs over the whole validation set at each epoch's
#: end, so it is both OpenAI's ``valid_*`` and ``full_valid_*``; a classifier's accuracy fills the
#: ``*_mean_token_accuracy`` fields (the share of right answers, as a token accuracy is for text).
OPENAI_METRICS: dict[str, tuple[str, ...]] = {
    "val_loss": ("valid_loss", "full_valid_loss"),
    "val_accuracy": ("valid_mean_token_accuracy", "full_valid_mean_token_accuracy"),
    "valid_loss": ("full_valid_loss",),
    "valid_accuracy": ("valid_mean_token_accuracy", "full_valid_mean_token_accuracy"),
    "train_accuracy": ("train_mean_token_accuracy",),
}


def openai_metrics(step: int, stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metrics under OpenAI's names, our own names kept (the dashboard reads them)."""
    shown: dict[str, Any] = {"step": step, **stored}
    for ours, theirs in OPENAI_METRICS.items():
        if stored.get(ours) is not None:
            for name in theirs:
                shown.setdefault(name, stored[ours])
    return shown


class CheckpointList(CursorPage[Checkpoint]):
    pass


# Per-step and per-epoch curves (``api.jobs.reporting``).
Metrics = JobMetrics


class JobDeleted(BaseModel):
    """The answer to ``DELETE /v1/fine_tuning/jobs/{id}`` (OpenAI's deleted-object shape)."""

    id: str = Field(max_length=64)
    object: Literal["fine_tuning.job.deleted"] = "fine_tuning.job.deleted"
    deleted: Literal[True] = True
    # The adapter the job had produced, deleted with it (None for a job that did not succeed).
    adapter_id: str | None = None
