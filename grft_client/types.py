"""The objects the API returns, as typed models.

They accept fields they do not declare (``extra="allow"``): a newer server adds fields without breaking
an older client, and ``model_dump()`` hands back everything the server sent.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

#: A job's states; the last three are final.
JOB_STATUSES = ("validating_files", "queued", "running", "cancelling", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class APIObject(BaseModel):
    model_config = ConfigDict(extra="allow")


T = TypeVar("T", bound=APIObject)


class Page(APIObject, Generic[T]):
    """One page of a list: ``data``, and the cursor (``last_id``) that fetches the next one."""

    object: str = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class FileObject(APIObject):
    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"


class Deleted(APIObject):
    id: str
    object: str
    deleted: bool = True


class JobError(APIObject):
    code: str
    message: str
    param: str | None = None


class Progress(APIObject):
    steps_completed: int = 0
    total_steps: int | None = None
    seconds_remaining: float | None = None


class Job(APIObject):
    id: str
    object: str = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    model: str
    fine_tuned_model: str | None = None
    organization_id: str | None = None
    status: str
    training_file: str
    validation_file: str | None = None
    error: JobError | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    estimated_finish: int | None = None
    user_provided_suffix: str | None = None
    progress: Progress = Field(default_factory=Progress)
    trainable_params: int | None = None
    adapter_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobEvent(APIObject):
    id: str
    object: str = "fine_tuning.job.event"
    created_at: int
    level: str = "info"
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


class Checkpoint(APIObject):
    id: str
    object: str = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any] = Field(default_factory=dict)


class MetricPoint(APIObject):
    step: int | None = None
    epoch: float | None = None
    value: float


#: Series name → points, e.g. ``{"train_loss": [MetricPoint(step=10, value=0.7)], "val_accuracy": [...]}``.
Metrics = dict[str, list[MetricPoint]]


class Adapter(APIObject):
    id: str
    object: str = "adapter"
    created_at: int
    base_model: str
    method: str
    bytes: int
    job_id: str | None = None
    trainable_params: int | None = None
    labels: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)


class Model(APIObject):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "grft"
    family: str | None = None
    modality: str | None = None
    num_params: int | None = None
    fingerprint: str | None = None


class LabelScore(APIObject):
    label: str
    score: float


class Prediction(APIObject):
    label: str
    score: float
    top_k: list[LabelScore] = Field(default_factory=list)
