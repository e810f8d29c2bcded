"""The trainer callbacks of a job: progress and events in the database, cancel checks, checkpoint uploads.

Every write is fenced by the job's lease (``domain.jobs.lifecycle.heartbeat``), so a worker that lost
the job stops at its next write with ``LeaseLost``; a cancel request stops it with ``TrainingInterrupted``,
which the trainer lets through after its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import posixpath
import time
from pathlib import Path
from typing import Any

from domain.artifacts import ArtifactStore, checkpoints_key
from domain.db import session_scope
from domain.jobs import events
from domain.jobs import lifecycle as state
from domain.jobs.lifecycle import Lease, LeaseLost
from domain.jobs.states import JobStatus
from domain.settings import Settings
from grft_core.errors import TrainingInterrupted
from grft_core.method.checkpoint import PREFIX, list_checkpoints
from grft_core.method.divergence import Divergence
from grft_core.method.selection import Selection
from grft_core.method.trainer import AUTOTUNE_FILE, EpochMetrics, PhaseProgress, StepInfo
from worker import tracking
from worker.metrics import METRICS
from worker.transient import retrying

log = logging.getLogger(__name__)

# The library's stop check looks at the database at most this often (it is asked once per record).
CANCEL_POLL_S = 1.0
# Progress rows are rewritten at most this often (each write is a heartbeat and a cancel check).
PROGRESS_INTERVAL_S = 1.0
# Per-step metrics events per run, at most: a loss curve of this many points is smooth enough.
MAX_STEP_EVENTS = 500
# Validation's stages: fetch the files, read them, check them against the model.
VALIDATION_STAGES = 3
# What each phase is called in the job's events when it starts (evaluations come every epoch: no event).
PHASE_MESSAGES = {
    "validating": "Validating the training data",
    "preparing": "Loading the data and the base model",
    "selecting": "Selecting the rows to train (gradient pass)",
    "tuning": "Choosing the auto hyperparameters (short trial runs)",
    "training": "Training",
}
# Checkpoint files live far longer than a run; there is no reason to cap them below the store's limits.
_NO_LIMIT = 1 << 50


class PauseRequested(TrainingInterrupted):
    """The job was asked to pause and its checkpoint at ``step`` is stored: the attempt stops here."""

    def __init__(self, step: int) -> None:
        super().__init__(f"paused after the checkpoint at step {step}")
        self.step = step


def _step_of(folder: Path | str) -> int:
    return int(posixpath.basename(str(folder)).removeprefix(PREFIX))


class CancelCheck:
    """The ``should_stop`` a worker hands to ``grft_core`` for one lease: True once a cancel was asked
    or the lease was lost.

    It is asked per record, chunk and batch, so it reads the heartbeat thread's flags first and goes to
    the database at most once per ``CANCEL_POLL_S``, through the same fenced heartbeat write the
    progress reports use (which also keeps the lease fresh). A validating job that is cancelled
    ends at once (``cancelled``), and then the heartbeat finds its lease gone: that stops the work too.
    A database that does not answer is not a reason to stop: the heartbeat thread and the lease deal
    with it.
    """

    def __init__(self, settings: Settings, lease: Lease, heartbeat: Any) -> None:
        self.url, self.lease, self.heartbeat = settings.database_url, lease, heartbeat
        self.next_poll = -math.inf
        self.calls = 0
        self.polls = 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.heartbeat.cancel.is_set() or self.heartbeat.lost.is_set():
            return True
        now = time.monotonic()
        if now < self.next_poll:
            return False
        self.next_poll = now + CANCEL_POLL_S
        self.polls += 1
        try:
            with session_scope(self.url) as session:
                status = state.heartbeat(session, self.lease)
        except LeaseLost:
            self.heartbeat.lost.set()
            return True
        except Exception:  # noqa: BLE001 - a database blip: the next poll tries again
            log.warning("cancel check of %s failed", self.lease.job_id, exc_info=True)
            return False
        if status == JobStatus.CANCELLING:
            self.heartbeat.cancel.set()
            return True
        return False


class ProgressWriter:
    """Writes a job's ``progress`` (phase, done, total, eta_seconds) under its lease, at most once per
    ``PROGRESS_INTERVAL_S`` within a phase; a new phase is written at once, with an event the first time."""

    def __init__(self, settings: Settings, lease: Lease, heartbeat: Any) -> None:
        self.url = settings.database_url
        # A write waits this long for a database that went away (worker.transient) before it fails.
        self.patience = settings.lease_seconds
        self.lease, self.heartbeat = lease, heartbeat
        self.last_write = -math.inf
        self.phase: str | None = None
        self.announced: set[str] = set()

    def _check(self) -> None:
        if self.heartbeat.lost.is_set():
            raise LeaseLost(self.lease.job_id)
        if self.heartbeat.cancel.is_set():
            raise TrainingInterrupted("a cancel was requested")

    def _write(self, event: dict[str, Any] | None = None, **progress: Any) -> None:
        def write() -> JobStatus:
            with session_scope(self.url) as session:
                status = state.heartbeat(session, self.lease, **progress)
                if event is not None:
                    events.add_event(session, self.lease.job_id, **event)
            return status

        status = retrying(write, budget_s=self.patience, what=f"progress of {self.lease.job_id}")
        self.last_write = time.monotonic()
        if status == JobStatus.CANCELLING:
            self.heartbeat.cancel.set()
            raise TrainingInterrupted("a cancel was requested")

    def report(
        self,
        phase: str,
        done: int,
        total: int,
        eta_s: float | None,
        event: dict[str, Any] | None = None,
        force: bool = False,
        **columns: Any,
    ) -> None:
        """Record where ``phase`` is; written when the phase changes, the phase ends, an event rides
        along, ``force`` is set, or ``PROGRESS_INTERVAL_S`` has passed."""
        self._check()
        changed = phase != self.phase
        self.phase = phase
        if changed and phase not in self.announced and phase in PHASE_MESSAGES:
            self.announced.add(phase)
            announce = {"message": PHASE_MESSAGES[phase], "type": "phase", "data": {"phase": phase}}
            if event is None:
                event = announce
            else:  # once per phase: its own row, before the event that came with it
                self._write(announce)
        now = time.monotonic()
        ended = total > 0 and done >= total
        due = now - self.last_write >= PROGRESS_INTERVAL_S
        if not (changed or ended or force or event is not None or due):
            return
        progress = {"phase": phase, "done": done, "total": total or None, "eta_seconds": eta_s}
        self._write(event, progress=events.clean_json(progress), **columns)

    def validating(self, done: int) -> None:
        """Validation has passed ``done`` of its ``VALIDATION_STAGES`` (fetch, read, check).

        A cancel ends a validating job at once, so the lease is gone: that stops the work like a cancel.
        """
        try:
            # Four writes in all: each stage is worth a row.
            self.report("validating", done, VALIDATION_STAGES, None, force=True)
        except LeaseLost:
            self.heartbeat.lost.set()
            raise TrainingInterrupted("the job was cancelled during validation") from None


class JobReporter(ProgressWriter):
    """Receives ``grft_core.method.trainer.fit`` callbacks for one job attempt."""

    def __init__(self, settings: Settings, lease: Lease, store: ArtifactStore, heartbeat: Any) -> None:
        super().__init__(settings, lease, heartbeat)
        self.store = store
        self.first: tuple[float, int] | None = None
        self.last_step: StepInfo | None = None
        self.last_epoch: EpochMetrics | None = None
        self.prerequisites_uploaded = False
        # The job's experiment trackers (W&B, MLflow): they never stop the job (worker.tracking).
        self.tracking = tracking.for_attempt(settings, lease)

    def _remaining(self, info: StepInfo, now: float) -> float:
        if self.first is None or info.step <= self.first[1]:
            return info.eta_s
        # The mean over this attempt includes evaluation and checkpoints, unlike the last step's time.
        per_step = (now - self.first[0]) / (info.step - self.first[1])
        return per_step * (info.total_steps - info.step)

    # -- callbacks -----------------------------------------------------------------------------------

    def announce_resume(self, checkpoints: Path) -> None:
        found = list_checkpoints(checkpoints)
        if found:
            step = _step_of(found[-1])
            self._write({"message": f"Resuming from the checkpoint at step {step}", "data": {"step": step}})

    def preparing(self) -> None:
        """The attempt is fetching and loading its data and model (no unit count is known)."""
        self.report("preparing", 0, 0, None)

    def on_progress(self, progress: PhaseProgress) -> None:
        try:
            self.report(progress.phase, progress.done, progress.total, progress.eta_s)
        except TrainingInterrupted:
            if self.heartbeat.lost.is_set() or not self.heartbeat.cancel.is_set():
                raise
            # A cancel this write learnt of: the pass's own stop check, asked before its next batch,
            # sees the flag and stops the pass where it is.

    def on_selection(self, selection: Selection) -> None:
        self._check()
        modules = {row["module"]: row["k"] for row in selection.summary()}
        self._write(
            {
                "message": f"Selected {selection.num_selected} {selection.axis} in {len(modules)} matrices",
                "type": "selection",
                "data": {"axis": selection.axis, "selected": selection.num_selected, "modules": modules},
            }
        )

    def on_autotune(self, record: dict[str, Any]) -> None:
        """One event per chosen hyperparameter: its value and why; the learning rate's lists every trial."""
        self._check()
        names = {"lr": "learning_rate", "epochs": "n_epochs", "batch_size": "batch_size"}
        for name, value in record["chosen"].items():
            data: dict[str, Any] = {
                "name": names[name],
                "value": value,
                "reason": record["reasons"].get(name),
            }
            if name == "lr":
                data.update(
                    trials=record["trials"],
                    budget_steps=record["budget_steps"],
                    used_steps=record["used_steps"],
                )
                tried = ", ".join(f"{t['lr']:g}" for t in record["trials"] if t["rung"] == 1)
                message = f"auto learning_rate={value:g}: tried {tried}; {record['reasons'].get(name)}"
            else:
                message = f"auto {names[name]}={value}: {record['reasons'].get(name)}"
            self._write({"message": message, "type": "autotune", "data": data})

    def on_step(self, info: StepInfo) -> None:
        self._check()
        now = time.monotonic()
        if self.first is None:
            self.first = (now, info.step)
        self.last_step = info
        self.tracking.on_step(info)
        METRICS.record_step(info.samples_per_s)
        every = max(1, math.ceil(info.total_steps / MAX_STEP_EVENTS))
        last = info.step == info.total_steps
        event = None
        if info.step % every == 0 or last:
            data: dict[str, Any] = {"step": info.step, "epoch": info.epoch, "train_loss": info.loss}
            if info.accuracy is not None:
                data["train_accuracy"] = info.accuracy
            data["lr"] = info.lr
            event = {
                "message": f"Step {info.step}/{info.total_steps}: training loss={info.loss:.4f}",
                "type": "metrics",
                "data": data,
            }
        remaining = self._remaining(info, now)
        self.report(
            "training",
            info.step,
            info.total_steps,
            remaining,
            event,
            steps_completed=info.step,
            total_steps=info.total_steps,
            seconds_remaining=remaining,
        )

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self._check()
        self.last_epoch = metrics
        self.tracking.on_epoch(metrics)
        data: dict[str, Any] = {
            "epoch": metrics.epoch,
            "step": metrics.step,
            "train_loss": metrics.train_loss,
        }
        if metrics.train_accuracy is not None:
            data["train_accuracy"] = metrics.train_accuracy
        data.update(valid_loss=metrics.val_loss, valid_accuracy=metrics.val_accuracy)
        self._write(
            {
                "message": (
                    f"Epoch {metrics.epoch}: train loss={metrics.train_loss:.4f}, "
                    f"valid loss={metrics.val_loss:.4f}, valid accuracy={metrics.val_accuracy:.4f}"
                ),
                "type": "metrics",
                "data": data,
            }
        )

    def on_divergence(self, divergence: Divergence) -> None:
        self._check()
        self._write(
            {
                "message": (
                    f"Training diverged at step {divergence.step} ({divergence.reason}): rolled back to step "
                    f"{divergence.restored_step} with the learning rate halved "
                    f"(x{divergence.lr_scale:g}; retry {divergence.retry} of {divergence.max_retries})"
                ),
                "type": "divergence",
                "level": "warning",
                "data": dict(divergence.__dict__),
            }
        )

    def on_checkpoint(self, step: int, path: Path) -> None:
        self._check()
        root = checkpoints_key(self.lease.job_id)
        if not self.prerequisites_uploaded:
            # Before any step folder: a complete step in the store implies the selection it needs.
            if (path.parent / "selection").is_dir():
                self.store.put_folder(f"{root}/selection", path.parent / "selection")
            for name in ("head_init.safetensors", AUTOTUNE_FILE):
                if (path.parent / name).is_file():
                    with (path.parent / name).open("rb") as source:
                        self.store.put_file(f"{root}/{name}", source, _NO_LIMIT)
            self.prerequisites_uploaded = True
        uri = self.store.put_folder(f"{root}/{path.name}", path)
        keep = [p.name for p in list_checkpoints(path.parent)]
        if path.name not in keep:
            keep.append(path.name)
        for name in self._stored_steps(root):
            if name not in keep:
                self.store.delete(f"{root}/{name}")
        metrics: dict[str, Any] = {"step": step}
        if self.last_step is not None:
            metrics["train_loss"] = self.last_step.loss
            if self.last_step.accuracy is not None:
                metrics["train_accuracy"] = self.last_step.accuracy
        if self.last_epoch is not None:
            metrics.update(
                epoch=self.last_epoch.epoch,
                val_loss=self.last_epoch.val_loss,
                val_accuracy=self.last_epoch.val_accuracy,
            )

        def record() -> JobStatus:
            with session_scope(self.url) as session:
                return state.checkpoint(
                    session, self.lease, step, uri, metrics, [_step_of(name) for name in keep]
                )

        status = retrying(record, budget_s=self.patience, what=f"checkpoint of {self.lease.job_id}")
        if status == JobStatus.PAUSING:  # stop now: this checkpoint holds every step so far
            raise PauseRequested(step)
        if status == JobStatus.CANCELLING:
            self.heartbeat.cancel.set()
            raise TrainingInterrupted("a cancel was requested")

    def _stored_steps(self, root: str) -> list[str]:
        if not self.store.exists(root):
            return []
        names = (
            posixpath.basename(p.rstrip("/")) for p in self.store.fs.ls(self.store.path(root), detail=False)
        )
        return [n for n in names if n.startswith(PREFIX)]
