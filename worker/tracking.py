"""Reporting a job's run to the experiment trackers its ``integrations`` name (Weights & Biases, MLflow):
the hyperparameters at the start, training loss and learning rate per step (at most ``MAX_POINTS`` per
run), the evaluation after each epoch, and the final metrics in the run's summary.

A tracker never fails the job: whatever it raises is logged here, told to the tenant as one job event
(the class of the failure only: no remote text, path or key), and that tracker stops for the rest of
the attempt. Credentials come from the worker's environment (``WANDB_API_KEY``, ``WANDB_MODE``,
``WANDB_DIR``; MLflow's ``MLFLOW_TRACKING_*``), never from the job.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from domain.db import session_scope
from domain.jobs import events
from domain.jobs.integrations import check_tracking_uri
from domain.jobs.lifecycle import Lease
from domain.jobs.specs import JobSpec, job_spec
from domain.settings import Settings
from grft_core.method.trainer import EpochMetrics, StepInfo

log = logging.getLogger(__name__)

# Points per metric per run at most: a curve of this many is smooth enough, and a remote tracker is
# not sent a request per step of a long run.
MAX_POINTS = 500
# MLflow keeps parameter values up to 6000 characters; ours are short, and a long one is cut.
MAX_PARAM_CHARS = 500

OnError = Callable[[str], None]


class Tracker(Protocol):
    name: str

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict[str, float], ok: bool) -> None: ...


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (trackers refuse NaN, or plot it as a gap at best)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def hyperparameters(job: JobSpec, attempt: int) -> dict[str, Any]:
    """What a run records as its configuration: the job's method config and where it came from."""
    return {
        **job.method,
        "job_id": job.id,
        "model": job.model,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "seed": job.seed,
        "attempt": attempt,
    }


class WandbTracker:
    name = "wandb"

    def __init__(self, options: dict[str, Any], job: JobSpec, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=options["project"],
            entity=options.get("entity"),
            name=options.get("name") or job.id,
            tags=options.get("tags"),
            group=job.id,  # the attempts of one job side by side
            job_type="fine-tune",
            config=config,
            dir=os.environ.get("WANDB_DIR") or None,
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, float], ok: bool) -> None:
        self.run.summary.update(summary)
        self.run.finish(exit_code=0 if ok else 1)


class MlflowTracker:
    name = "mlflow"

    def __init__(
        self, options: dict[str, Any], job: JobSpec, config: dict[str, Any], settings: Settings
    ) -> None:
        uri = check_tracking_uri(options["tracking_uri"], settings, field="mlflow.tracking_uri")
        if urlsplit(uri).scheme == "file":
            # MLflow 3 opens a file store only when asked to; ours live under GRFT_HOME/tracking.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        else:
            # A tracking server that does not answer must not hold training for minutes of retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=uri)
        name = options["experiment_name"]
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(
            experiment_id,
            run_name=options.get("run_name") or job.id,
            tags={"grft.job_id": job.id, "grft.attempt": str(config.get("attempt"))},
        )
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(config.items()) if v is not None]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, summary: dict[str, float], ok: bool) -> None:
        if summary:
            self.log(summary, int(summary.get("step", 0)))
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


def _job_event(settings: Settings, job_id: str) -> OnError:
    def tell(message: str) -> None:
        try:
            with session_scope(settings.database_url) as session:
                events.add_event(session, job_id, message, level="warning", data={"kind": "tracking"})
        except Exception:  # noqa: BLE001 - the event is a courtesy: the job goes on without it
            log.warning("could not record a tracking event for %s", job_id, exc_info=True)

    return tell


def _finish_all(trackers: list[Tracker], ok: bool) -> None:
    """Close what is still open (the attempt ended early: cancel, crash, lost lease)."""
    while trackers:
        tracker = trackers.pop()
        try:
            tracker.finish({}, ok)
        except Exception:  # noqa: BLE001 - at worst the run stays open in the tracker
            log.warning("closing the %s run failed", tracker.name, exc_info=True)


class Tracking:
    """The trackers of one attempt; ``JobReporter`` forwards the trainer's callbacks here."""

    def __init__(self, trackers: list[Tracker], on_error: OnError) -> None:
        self.trackers = trackers
        self.on_error = on_error
        self.every = 1
        self.last_step: StepInfo | None = None
        self.finished = False
        # An attempt that ends before its last epoch (cancel, error) closes its runs as failed when
        # the reporter goes away; a finished one has nothing left to close.
        self._closer = weakref.finalize(self, _finish_all, trackers, False)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker never fails the job
                log.warning("%s tracking failed while %s", tracker.name, what, exc_info=True)
                self.trackers.remove(tracker)
                self.on_error(
                    f"Tracking with {tracker.name} stopped ({type(exc).__name__} while {what}); "
                    "the job goes on without it"
                )

    def on_step(self, info: StepInfo) -> None:
        self.last_step = info
        self.every = max(1, math.ceil(info.total_steps / MAX_POINTS))
        if self.trackers and (info.step % self.every == 0 or info.step == info.total_steps):
            metrics = _numbers({"train_loss": info.loss, "lr": info.lr, "train_accuracy": info.accuracy})
            self._each("logging a step", lambda t: t.log(metrics, info.step))

    def on_epoch(self, metrics: EpochMetrics) -> None:
        step = metrics.step or (self.last_step.step if self.last_step else 0)
        values = _numbers(
            {
                "epoch": metrics.epoch,
                "val_loss": metrics.val_loss,
                "val_accuracy": metrics.val_accuracy,
                "epoch_train_loss": metrics.train_loss,
                "epoch_train_accuracy": metrics.train_accuracy,
            }
        )
        if self.trackers:
            self._each("logging an epoch", lambda t: t.log(values, step))
        last = self.last_step
        if last is not None and last.step == last.total_steps:  # the run's last evaluation
            self.finish({**values, "step": float(step)}, ok=True)

    def finish(self, summary: dict[str, float], ok: bool) -> None:
        if self.finished:
            return
        self.finished = True
        final = {f"final_{k}": v for k, v in summary.items() if k != "step"}
        if "step" in summary:
            final["step"] = summary["step"]
        self._each("finishing the run", lambda t: t.finish(final, ok))
        self.trackers.clear()
        self._closer.detach()


def start(settings: Settings, job: JobSpec, attempt: int, on_error: OnError) -> Tracking:
    """Open a run in each tracker the job names; one that cannot start is reported and skipped."""
    tracking = Tracking([], on_error)
    config = hyperparameters(job, attempt)
    for item in job.integrations:
        kind = str(item.get("type"))
        options = item.get(kind) or {}

        def begin(kind: str = kind, options: dict[str, Any] = options) -> Tracker:
            if kind == "wandb":
                return WandbTracker(options, job, config)
            if kind == "mlflow":
                return MlflowTracker(options, job, config, settings)
            raise ValueError(f"unknown integration {kind!r}")

        try:
            tracking.trackers.append(begin())
        except Exception as exc:  # noqa: BLE001 - a tracker never fails the job
            log.warning("%s tracking could not start for %s", kind, job.id, exc_info=True)
            on_error(
                f"Tracking with {kind} could not start ({type(exc).__name__}); the job goes on without it"
            )
    return tracking


def for_attempt(settings: Settings, lease: Lease) -> Tracking:
    """The tracking of the attempt ``lease`` holds (reads the job's integrations); never raises."""
    on_error = _job_event(settings, lease.job_id)
    try:
        with session_scope(settings.database_url) as session:
            job = job_spec(session, lease.job_id)
    except Exception:  # noqa: BLE001 - no tracking is better than no job
        log.warning("could not read the integrations of %s", lease.job_id, exc_info=True)
        return Tracking([], on_error)
    if not job.integrations:
        return Tracking([], on_error)
    return start(settings, job, lease.attempt, on_error)
