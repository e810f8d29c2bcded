"""The objects the API returns, as typed models.

They accept fields they do not declare (``extra="allow"``): a newer server adds fields without breaking
an older client, and ``model_dump()`` hands back everything the server sent.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

#: A job's states; the last three are final.
JOB_STATUSES = (
    "validating_files",
    "queued",
    "running",
    "pausing",
    "paused",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
)
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
    """Training steps, and (from servers that report it) the current phase with its own units done."""

    steps_completed: int = 0
    total_steps: int | None = None
    seconds_remaining: float | None = None
    phase: str | None = None
    done: int | None = None
    total: int | None = None
    eta_seconds: float | None = None


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


class StepPoint(APIObject):
    """One optimizer step's numbers."""

    step: int
    epoch: int | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    lr: float | None = None


class EpochPoint(APIObject):
    """One finished epoch: validation over the whole split, and training averages."""

    epoch: int
    step: int | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    valid_loss: float | None = None
    valid_accuracy: float | None = None


class JobMetrics(APIObject):
    """A job's curves: one point per step and one per epoch, oldest first."""

    object: str = "fine_tuning.job.metrics"
    steps: list[StepPoint] = Field(default_factory=list)
    epochs: list[EpochPoint] = Field(default_factory=list)

    @classmethod
    def parse(cls, body: Any) -> JobMetrics:
        """The answer of ``GET …/metrics``; also reads the older shape, one list per series
        (``{"train_loss": [{"step", "epoch", "value"}], "val_accuracy": [...]}``)."""
        if not isinstance(body, dict) or "steps" in body or "epochs" in body:
            return cls.model_validate(body)
        steps: dict[int, dict[str, Any]] = {}
        epochs: dict[int, dict[str, Any]] = {}
        for name, points in body.items():
            if not isinstance(points, list):
                continue
            column = name.replace("val_", "valid_", 1) if name.startswith("val_") else name
            for i, point in enumerate(points):
                if column.startswith("valid_") or point.get("step") is None:
                    epoch = int(point["epoch"]) if point.get("epoch") is not None else i + 1
                    epochs.setdefault(epoch, {"epoch": epoch})[column] = point["value"]
                else:
                    step = int(point["step"])
                    steps.setdefault(step, {"step": step})[column] = point["value"]
        return cls.model_validate(
            {"steps": [steps[k] for k in sorted(steps)], "epochs": [epochs[k] for k in sorted(epochs)]}
        )


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


# --- text generation (causal language models) ---------------------------------------------------------


class Usage(APIObject):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatMessage(APIObject):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(APIObject):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletion(APIObject):
    id: str
    object: str = "chat.completion"
    created: int = 0
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The reply (the first choice's content)."""
        return (self.choices[0].message.content or "") if self.choices else ""


class ChunkDelta(APIObject):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(APIObject):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None


class ChatCompletionChunk(APIObject):
    id: str
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str
    choices: list[ChatChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return (self.choices[0].delta.content or "") if self.choices else ""


class CompletionChoice(APIObject):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None


class TextCompletion(APIObject):
    """A completion, and each chunk of a streamed one (the same object, as OpenAI has it)."""

    id: str
    object: str = "text_completion"
    created: int = 0
    model: str
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""
