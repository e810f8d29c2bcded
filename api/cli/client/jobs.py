"""``grft jobs``: fine-tuning jobs on the server: create, list, get, follow, cancel, events, metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli.client.common import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_USAGE,
    JsonOpt,
    connection,
    err,
    errors,
    fail,
    fields,
    out,
    print_json,
    table,
    when,
)
from api.cli.client.common import group as make_group
from api.cli.client.follow import Sink, event_line, follow
from grft_client import Client, Job

jobs_app = make_group("jobs", "Fine-tuning jobs on the server: create, list, get, follow, cancel.")

JobId = Annotated[str, typer.Argument(help="The job's id (ftjob-...).")]
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def parse_pairs(pairs: list[str], option: str) -> dict[str, Any]:
    """``["k=4", "n_epochs=3", "axis=rows"]`` → ``{"k": 4, "n_epochs": 3, "axis": "rows"}`` (values
    are read as JSON when they parse: numbers, true/false, lists; else kept as text)."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"{option} takes KEY=VALUE (got {pair!r})", EXIT_USAGE)
        try:
            parsed[key.strip()] = json.loads(raw)
        except ValueError:
            parsed[key.strip()] = raw
    return parsed


def dataset_ref(client: Client, value: str, as_json: bool) -> str:
    """A file id or dataset URI as given; a local path is uploaded first and named by its new id."""
    if value.startswith("file-") or _URI.match(value):
        return value
    path = Path(value)
    if not path.is_file():
        raise fail(f"{value!r} is neither a file id (file-...), a URI, nor a local file", EXIT_USAGE)
    uploaded = client.files.upload(path)
    if not as_json:
        err.print(f"uploaded {path.name} ({uploaded.bytes:,} bytes) as {uploaded.id}", highlight=False)
    return uploaded.id


def show_job(job: Job) -> None:
    p = job.progress
    steps = f"{p.steps_completed}/{p.total_steps if p.total_steps is not None else '?'}"
    hyper = job.method.get(job.method.get("type", ""), {}).get("hyperparameters", {})
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("status", job.status),
        ("model", job.model),
        ("method", job.method.get("type")),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in hyper.items()) or None),
        ("training file", job.training_file),
        ("validation file", job.validation_file),
        ("progress", steps),
        ("seconds left", f"{p.seconds_remaining:.0f}" if p.seconds_remaining is not None else None),
        ("created", when(job.created_at)),
        ("finished", when(job.finished_at)),
        ("adapter", job.adapter_id),
        ("trainable params", f"{job.trainable_params:,}" if job.trainable_params is not None else None),
    ]
    if job.error is not None:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    fields(rows)


def _follow(ctx: typer.Context, client: Client, job_id: str, as_json: bool, poll: float) -> None:
    sink = Sink(out, err, as_json=as_json, live=err.is_terminal)
    try:
        job = follow(client, job_id, sink, poll_s=poll)
    except KeyboardInterrupt:
        err.print(
            f"stopped following {job_id}; it keeps running ('grft jobs cancel {job_id}' cancels it)",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if job.status != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)


@jobs_app.command("create")
def create(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Base model id (see 'grft models list').")],
    training_file: Annotated[
        str, typer.Option(help="A file id, a dataset URI, or a local file (uploaded first).")
    ],
    validation_file: Annotated[str | None, typer.Option(help="Same forms as --training-file.")] = None,
    method: Annotated[str, typer.Option(help="grft, lora, full, linear_probe or supervised.")] = "grft",
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="A hyperparameter, KEY=VALUE, repeatable (k=4, n_epochs=3)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    suffix: Annotated[str | None, typer.Option(help="A short name for the fine-tuned model.")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="KEY=VALUE to tag the job, repeatable.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="A repeat with the same key returns the first job instead.")
    ] = None,
    follow_it: Annotated[bool, typer.Option("--follow", help="Then follow it to its end.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a fine-tuning job (and with --follow, follow it: exit 1 if it fails)."""
    hyperparameters = parse_pairs(param or [], "--param")
    tags = {k: str(v) for k, v in parse_pairs(metadata or [], "--metadata").items()}
    with errors(as_json):
        client = connection(ctx).client()
        job = client.jobs.create(
            model,
            dataset_ref(client, training_file, as_json),
            validation_file=dataset_ref(client, validation_file, as_json) if validation_file else None,
            method=method,
            hyperparameters=hyperparameters,
            seed=seed,
            suffix=suffix,
            metadata=tags or None,
            idempotency_key=idempotency_key,
        )
        if as_json and not follow_it:
            print_json(job)
        elif not as_json:
            out.print(f"created {job.id} ({job.method.get('type')} on {job.model})", highlight=False)
        if follow_it:
            _follow(ctx, client, job.id, as_json, 2.0)


@jobs_app.command("list")
def list_jobs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many (per page with --all).")] = 20,
    after: Annotated[str | None, typer.Option(help="Start after this job id.")] = None,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Every job, page by page.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with errors(as_json):
        client = connection(ctx).client()
        if all_pages:
            items, more = list(client.jobs.iter(limit=limit, status=status)), False
        else:
            page = client.jobs.list(limit=limit, after=after, status=status)
            items, more = page.data, page.has_more
    if as_json:
        print_json(items)
        return
    rows = []
    for j in items:
        total = j.progress.total_steps
        rows.append((j.id, j.status, j.model, j.method.get("type"),
                     f"{j.progress.steps_completed}/{total if total is not None else '?'}",
                     when(j.created_at), j.adapter_id))  # fmt: skip
    table(("id", "status", "model", "method", "steps", "created", "adapter"), rows)
    if more:
        out.print(f"(more: --after {items[-1].id}, or --all)", highlight=False)


@jobs_app.command("get")
def get(ctx: typer.Context, job_id: JobId, as_json: JsonOpt = False) -> None:
    """Show one job: status, progress, adapter, error."""
    with errors(as_json):
        job = connection(ctx).client().jobs.get(job_id)
    if as_json:
        print_json(job)
    else:
        show_job(job)


@jobs_app.command("follow")
def follow_cmd(
    ctx: typer.Context,
    job_id: JobId,
    poll: Annotated[float, typer.Option(min=0.2, max=60, help="Seconds between status polls.")] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job to its end: a live bar (phase, step/total, loss, ETA) and its events; with --json,
    one JSON object per line ({"event": ...}, then {"job": ...}). Exit 0 if it succeeded, 1 if it
    failed or was cancelled; Ctrl-C stops following (exit 130) and leaves the job running."""
    with errors(as_json):
        _follow(ctx, connection(ctx).client(), job_id, as_json, poll)


@jobs_app.command("cancel")
def cancel(ctx: typer.Context, job_id: JobId, as_json: JsonOpt = False) -> None:
    """Cancel a job (it stops after its current step)."""
    with errors(as_json):
        job = connection(ctx).client().jobs.cancel(job_id)
    if as_json:
        print_json(job)
    else:
        out.print(f"{job.id} {job.status}", highlight=False)


@jobs_app.command("events")
def events(
    ctx: typer.Context,
    job_id: JobId,
    limit: Annotated[int, typer.Option(min=1, max=100, help="The newest this many.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """A job's latest events, oldest first."""
    with errors(as_json):
        page = connection(ctx).client().jobs.events(job_id, limit=limit)
    ordered = list(reversed(page.data))
    if as_json:
        print_json(ordered)
        return
    for event in ordered:
        out.print(event_line(event), markup=False, highlight=False)


@jobs_app.command("checkpoints")
def checkpoints(ctx: typer.Context, job_id: JobId, as_json: JsonOpt = False) -> None:
    """A job's stored checkpoints."""
    with errors(as_json):
        page = connection(ctx).client().jobs.checkpoints(job_id, limit=100)
    if as_json:
        print_json(page.data)
        return
    rows = [(c.id, c.step_number, when(c.created_at), c.fine_tuned_model_checkpoint) for c in page.data]
    table(("id", "step", "created", "name"), rows)


@jobs_app.command("metrics")
def metrics(ctx: typer.Context, job_id: JobId, as_json: JsonOpt = False) -> None:
    """A job's curves: every epoch's numbers, and the last step's (with --json, every step)."""
    with errors(as_json):
        curves = connection(ctx).client().jobs.metrics(job_id)
    if as_json:
        print_json(curves)
        return

    def number(value: float | None) -> str | None:
        return None if value is None else f"{value:.4g}"

    rows = [(e.epoch, e.step, number(e.train_loss), number(e.valid_loss), number(e.valid_accuracy))
            for e in curves.epochs]  # fmt: skip
    table(("epoch", "step", "train_loss", "valid_loss", "valid_accuracy"), rows)
    if curves.steps:
        last = curves.steps[-1]
        out.print(
            f"{len(curves.steps)} steps; last: step {last.step}, train_loss {number(last.train_loss)}, "
            f"lr {number(last.lr)}",
            highlight=False,
        )
