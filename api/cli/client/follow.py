"""``grft jobs follow``: a job's events as they happen and a live bar (phase, step/total, loss, ETA).

The events come from the job's Server-Sent-Events stream (read in a thread); the status, progress and
ETA from polling the job. Both feed one ``FollowState``, which ``columns`` turns into the text of the
bar: that function is all the rendering there is, so it is tested on recorded events.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from grft_client import TERMINAL_STATUSES, Client, Job, JobEvent

POLL_S = 2.0
# After the job is seen finished, how long the stream may take to deliver its last events.
DRAIN_S = 5.0

_PHASES = {
    "validating_files": "validating",
    "queued": "queued",
    "cancelling": "cancelling",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass
class FollowState:
    """What is known of a followed job, from its polled object and its events."""

    job_id: str
    status: str = "validating_files"
    step: int = 0
    total: int | None = None
    loss: float | None = None
    val_accuracy: float | None = None
    eta_s: float | None = None
    selected: bool = False
    # The phase the server reports (validating, preparing, selecting, training, ...) and its units.
    reported_phase: str | None = None
    phase_done: int | None = None
    phase_total: int | None = None
    phase_eta_s: float | None = None
    job: Job | None = field(default=None, repr=False)

    def on_job(self, job: Job) -> None:
        self.job, self.status = job, job.status
        progress = job.progress
        self.step = max(self.step, progress.steps_completed)
        self.total = progress.total_steps or self.total
        self.eta_s = progress.seconds_remaining if job.status == "running" else None
        # None from a server that does not report phases: the phase is then derived (see ``phase``).
        self.reported_phase = progress.phase
        self.phase_done, self.phase_total = progress.done, progress.total
        self.phase_eta_s = progress.eta_seconds

    def on_event(self, event: JobEvent) -> None:
        data = event.data or {}
        if event.type == "selection":
            self.selected = True
        elif event.type == "phase" and isinstance(data.get("phase"), str):
            if data["phase"] != self.reported_phase:
                self.reported_phase, self.phase_done, self.phase_total = data["phase"], None, None
        elif event.type == "metrics":
            if isinstance(data.get("step"), int):
                self.step = max(self.step, data["step"])
            accuracy = data.get("valid_accuracy", data.get("val_accuracy"))
            if isinstance(accuracy, int | float):
                self.val_accuracy = float(accuracy)
            # A step's loss; an epoch's summary (which carries validation numbers) repeats its mean.
            elif isinstance(data.get("train_loss"), int | float):
                self.loss = float(data["train_loss"])
            # The step events say "Step s/t": the total is known before the next poll sees it.
            if event.message.startswith("Step ") and "/" in event.message:
                total = event.message.split("/", 1)[1].split(":", 1)[0]
                if total.isdigit():
                    self.total = self.total or int(total)
            if self.step > 0:
                self.reported_phase = "training"

    @property
    def phase(self) -> str:
        if self.status != "running":
            return _PHASES.get(self.status, self.status)
        if self.reported_phase and self.reported_phase != "done":
            return self.reported_phase
        if self.step == 0:
            return "training" if self.selected else "selecting"
        return "training"

    def units(self) -> tuple[int, int | None, float | None]:
        """Done, total and seconds left of what the bar shows: training steps, or the current phase's
        own units before training starts (selection batches, validation stages)."""
        if self.phase != "training" and self.phase_total:
            return self.phase_done or 0, self.phase_total, self.phase_eta_s
        return self.step, self.total, self.eta_s


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -"
    whole = int(round(seconds))
    return f"ETA {whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def columns(state: FollowState) -> dict[str, str]:
    """The bar's text columns: phase, steps (``12/40``), loss, validation accuracy, ETA."""
    done, total, eta = state.units()
    return {
        "phase": state.phase,
        "steps": f"{done}/{total if total is not None else '?'}",
        "loss": f"loss {state.loss:.4f}" if state.loss is not None else "loss -",
        "accuracy": f"val acc {state.val_accuracy:.3f}" if state.val_accuracy is not None else "",
        "eta": _eta(eta),
    }


def status_line(state: FollowState) -> str:
    """The bar as one plain line (what a log or a test sees)."""
    c = columns(state)
    return "  ".join(v for v in (c["phase"], c["steps"], c["loss"], c["accuracy"], c["eta"]) if v)


def event_line(event: JobEvent) -> str:
    moment = datetime.fromtimestamp(event.created_at, UTC).strftime("%H:%M:%S")
    level = "" if event.level == "info" else f"{event.level}: "
    return f"{moment} {level}{event.message}"


def final_line(job: Job) -> str:
    """How the job ended, in one line."""
    line = f"job {job.id} {job.status}"
    if job.status == "succeeded" and job.adapter_id:
        line += f": adapter {job.adapter_id}"
        if job.trainable_params is not None:
            line += f" ({job.trainable_params:,} trainable parameters)"
    elif job.error is not None:
        line += f": {job.error.code}: {job.error.message}"
    return line


class Bar:
    """The live bar on a terminal (rich), printing event lines above it."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[phase]}"),
            BarColumn(),
            TextColumn("{task.fields[steps]}", markup=False),
            TextColumn("{task.fields[loss]}", markup=False),
            TextColumn("{task.fields[accuracy]}", markup=False),
            TextColumn("{task.fields[eta]}", markup=False),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("job", total=None, **columns(FollowState("")))  # type: ignore[arg-type]

    def start(self) -> None:
        self.progress.start()

    def update(self, state: FollowState) -> None:
        done, total, _ = state.units()
        self.progress.update(self.task, total=total, completed=done, **columns(state))  # type: ignore[arg-type]

    def print(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False)

    def stop(self) -> None:
        self.progress.stop()


class Sink:
    """Where a follow writes: JSON lines, a live bar, or plain lines."""

    def __init__(self, out: Console, err: Console, *, as_json: bool, live: bool) -> None:
        self.out, self.as_json = out, as_json
        self.bar = Bar(err) if live and not as_json else None

    def event(self, event: JobEvent, state: FollowState) -> None:
        if self.as_json:
            typer.echo(json.dumps({"event": event.model_dump(mode="json")}))
        elif self.bar is not None:
            self.bar.print(event_line(event))
            self.bar.update(state)
        else:
            self.out.print(event_line(event), markup=False, highlight=False)

    def job(self, state: FollowState) -> None:
        if self.bar is not None:
            self.bar.update(state)

    def end(self, job: Job) -> None:
        if self.as_json:
            typer.echo(json.dumps({"job": job.model_dump(mode="json")}))
        else:
            self.out.print(final_line(job), markup=False, highlight=False)


def _pump(client: Client, job_id: str, inbox: queue.Queue[tuple[str, Any]]) -> None:
    try:
        for event in client.jobs.follow(job_id):
            inbox.put(("event", event))
        inbox.put(("end", None))
    except Exception as exc:  # handed to the main thread, which raises it
        inbox.put(("error", exc))


def follow(client: Client, job_id: str, sink: Sink, *, poll_s: float = POLL_S) -> Job:
    """Follow the job until it has finished (events, then the final job object); returns the job.

    Ctrl-C raises ``KeyboardInterrupt`` here, in the main thread; the job is left running."""
    state = FollowState(job_id)
    state.on_job(client.jobs.get(job_id))
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    threading.Thread(target=_pump, args=(client, job_id, inbox), name="grft-follow", daemon=True).start()
    if sink.bar is not None:
        sink.bar.start()
    try:
        sink.job(state)
        stream_open, next_poll, finished_at = True, time.monotonic() + poll_s, None
        while stream_open:
            now = time.monotonic()
            if finished_at is not None and now - finished_at > DRAIN_S:
                break  # the stream is late with its end: the job object is the truth
            if now >= next_poll:
                state.on_job(client.jobs.get(job_id))
                sink.job(state)
                next_poll = now + poll_s
                if state.status in TERMINAL_STATUSES and finished_at is None:
                    finished_at = now
            try:
                kind, item = inbox.get(timeout=max(0.05, next_poll - time.monotonic()))
            except queue.Empty:
                continue
            if kind == "event":
                state.on_event(item)
                sink.event(item, state)
            elif kind == "end":
                stream_open = False  # the stream ends once the job has finished
            else:
                raise item
        job = client.jobs.get(job_id)
        state.on_job(job)
        sink.job(state)
    finally:
        if sink.bar is not None:
            sink.bar.stop()
    sink.end(job)
    return job
