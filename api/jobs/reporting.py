"""What a job reports while and after it runs: its progress object, its metric curves, and the
hyperparameters it chose for the knobs that were ``"auto"``.

- ``Progress``: OpenAI-style ``steps_completed/total_steps/seconds_remaining`` plus the phase in course
  (``validating``, ``queued``, ``preparing``, ``selecting``, ``tuning``, ``evaluating``, ``training``,
  ``done``) with ``done``/``total`` units of that phase, ``fraction`` and ``eta_seconds``.
- ``JobMetrics``: per-step points (``step``, ``epoch``, ``train_loss``, ``train_accuracy``, ``lr``) and
  per-epoch points (``epoch``, ``step``, ``train_loss``, ``valid_loss``, ``valid_accuracy``, …), one
  point per step and per epoch: a resumed attempt that trains a step again replaces its point.
- ``"auto"``: a request's ``n_epochs``, ``batch_size``, ``learning_rate`` or ``learning_rate_multiplier``
  may be ``"auto"``; the job's config lists them in ``auto`` and the worker chooses them
  (``grft_core.method.autotune``). Until it has, the job shows ``"auto"``; then the chosen values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from domain.jobs import models
from domain.jobs.states import JobStatus
from grft_core.method import GRFTConfig

DEFAULT_LR: float = GRFTConfig.model_fields["lr"].default

# --- "auto" -----------------------------------------------------------------------------------------

#: Request names that accept "auto", and the config field each one sets.
AUTO_FIELDS = {
    "n_epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "lr",
    "learning_rate_multiplier": "lr",
}


def pop_auto(values: dict[str, Any]) -> list[str]:
    """Remove the ``"auto"`` values from request ``values``; the config fields they leave to the worker."""
    auto = {
        AUTO_FIELDS[name] for name, value in list(values.items()) if value == "auto" and name in AUTO_FIELDS
    }
    for name in [n for n, v in values.items() if v == "auto" and n in AUTO_FIELDS]:
        del values[name]
    return sorted(auto)


def chosen_values(job: models.Job) -> dict[str, Any]:
    """What a finished job trained with, under the request's names (empty before it finished)."""
    result = job.result or {}
    chosen = result.get("hyperparameters")
    return dict(chosen) if isinstance(chosen, dict) else {}


class JobHyperparameters(BaseModel):
    n_epochs: int | Literal["auto"] | None
    batch_size: int | Literal["auto"] | None
    learning_rate_multiplier: float | Literal["auto"] | None

    @classmethod
    def of(cls, job: models.Job) -> JobHyperparameters:
        """The values trained with once known; ``"auto"`` for a knob still to be chosen."""
        config = job.method or {}
        auto = set(config.get("auto") or ())
        chosen = chosen_values(job)

        def value(public: str, field: str) -> Any:
            if public in chosen:
                return chosen[public]
            return "auto" if field in auto else config.get(field)

        lr = value("learning_rate", "lr")
        multiplier = lr / DEFAULT_LR if isinstance(lr, int | float) else lr
        return cls(
            n_epochs=value("n_epochs", "epochs"),
            batch_size=value("batch_size", "batch_size"),
            learning_rate_multiplier=multiplier,
        )


def with_auto(shown: dict[str, Any], job: models.Job) -> dict[str, Any]:
    """A method's shown hyperparameters with ``"auto"`` for the knobs still to be chosen, and the
    chosen values once the job has them."""
    config = job.method or {}
    auto = set(config.get("auto") or ())
    chosen = chosen_values(job)
    out = dict(shown)
    for public, field in (("n_epochs", "epochs"), ("batch_size", "batch_size"), ("learning_rate", "lr")):
        if public in chosen:
            out[public] = chosen[public]
        elif field in auto:
            out[public] = "auto"
    return out


# --- progress ---------------------------------------------------------------------------------------

_IN_PROGRESS = {JobStatus.RUNNING, JobStatus.CANCELLING}


class Progress(BaseModel):
    steps_completed: int
    total_steps: int | None
    seconds_remaining: float | None
    phase: str | None = None
    done: int | None = None
    total: int | None = None
    fraction: float | None = None
    eta_seconds: float | None = None

    @classmethod
    def of(cls, job: models.Job) -> Progress:
        """The job's progress: the phase the worker last reported while it works, ``queued`` while it
        waits, ``done`` once it succeeded; a job that stopped keeps the phase it stopped in."""
        stored = job.progress if isinstance(job.progress, dict) else {}
        status = JobStatus(job.status)
        phase, done, total = stored.get("phase"), stored.get("done"), stored.get("total")
        eta = stored.get("eta_seconds")
        if status == JobStatus.VALIDATING_FILES:
            phase = phase or "validating"
        elif status == JobStatus.QUEUED:
            phase, done, total, eta = "queued", None, None, None
        elif status == JobStatus.SUCCEEDED:
            phase, done, total, eta = "done", job.steps_completed, job.total_steps, 0.0
        elif status in _IN_PROGRESS:
            phase = phase or "preparing"
        else:
            eta = None  # stopped: nothing remains to wait for
        fraction = None
        if status == JobStatus.SUCCEEDED:
            fraction = 1.0
        elif isinstance(done, int) and isinstance(total, int) and total > 0:
            fraction = min(1.0, done / total)
        return cls(
            steps_completed=job.steps_completed,
            total_steps=job.total_steps,
            seconds_remaining=job.seconds_remaining if status != JobStatus.SUCCEEDED else None,
            phase=phase,
            done=done if isinstance(done, int) else None,
            total=total if isinstance(total, int) else None,
            fraction=fraction,
            eta_seconds=float(eta) if isinstance(eta, int | float) and math.isfinite(eta) else None,
        )


# --- metrics ----------------------------------------------------------------------------------------

# Names older events used, and the ones the curves use.
_RENAMED = {"val_loss": "valid_loss", "val_accuracy": "valid_accuracy"}


class StepPoint(BaseModel):
    """One optimizer step."""

    step: int
    epoch: int | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    lr: float | None = None


class EpochPoint(BaseModel):
    """One finished epoch (counted from 1): validation over the whole split, training averages."""

    # Other numbers an epoch reports (a language model's token accuracy) ride along under their names.
    model_config = ConfigDict(extra="allow")

    epoch: int
    step: int | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    valid_loss: float | None = None
    valid_accuracy: float | None = None


class JobMetrics(BaseModel):
    object: Literal["fine_tuning.job.metrics"] = "fine_tuning.job.metrics"
    steps: list[StepPoint]
    epochs: list[EpochPoint]


def _numbers(data: Mapping[str, Any]) -> dict[str, float]:
    return {
        _RENAMED.get(k, k): float(v)
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _is_epoch(data: Mapping[str, Any]) -> bool:
    return any(k.startswith(("valid_", "val_")) for k in data)


def build_metrics(events: Iterable[Mapping[str, Any]]) -> JobMetrics:
    """Curves from the ``data`` of a job's metrics events, oldest first.

    An event with validation numbers is an epoch's; any other with a ``step`` is a step's. A later
    event for the same step (or epoch) replaces the earlier one: an attempt resumed from a checkpoint
    trains the steps after it again, and its numbers are the ones the adapter came from.
    """
    steps: dict[int, StepPoint] = {}
    epochs: dict[int, EpochPoint] = {}
    for data in events:
        numbers = _numbers(data)
        if _is_epoch(data):
            epoch = numbers.pop("epoch", None)
            if epoch is None:
                continue
            step = numbers.pop("step", None)
            epochs[int(epoch)] = EpochPoint(
                epoch=int(epoch), step=None if step is None else int(step), **numbers
            )
        elif "step" in numbers:
            step = int(numbers.pop("step"))
            epoch = numbers.pop("epoch", None)
            known = {k: numbers[k] for k in ("train_loss", "train_accuracy", "lr") if k in numbers}
            steps[step] = StepPoint(step=step, epoch=None if epoch is None else int(epoch), **known)
    return JobMetrics(steps=[steps[s] for s in sorted(steps)], epochs=[epochs[e] for e in sorted(epochs)])
