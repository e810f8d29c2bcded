"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning job API, plus delete, metrics and an event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Path, Query, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse

from api.deps import InferenceDep, SessionDep, SettingsDep, StoreDep, TenantDep
from api.errors import (
    BadRequest,
    Conflict,
    JobNotFinished,
    NotFound,
    QuotaExceeded,
    Unauthorized,
    error_responses,
)
from api.jobs import queue, service
from api.jobs.schemas import (
    Checkpoint,
    CheckpointList,
    Job,
    JobCreate,
    JobDeleted,
    JobEvent,
    JobEventList,
    JobList,
    Metrics,
)
from domain.jobs.states import JobStatus
from grft_core.errors import ConfigError, DatasetRejected, ModelNotFound

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

JobId = Annotated[str, Path(max_length=64)]
Cursor = Annotated[str | None, Query(max_length=64)]
Limit = Annotated[int, Query(ge=1, le=100)]
POLL_SECONDS = 0.5
STREAM_BATCH = 100
MAX_METADATA_FILTERS = 16


@router.post(
    "",
    responses=error_responses(
        Unauthorized,
        BadRequest,
        NotFound,
        ModelNotFound,
        ConfigError,
        DatasetRejected,
        Conflict,
        QuotaExceeded,
    ),
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Job:
    tenant_id = tenant.id
    try:
        job, created = service.create(session, tenant_id, settings, body, idempotency_key)
        session.commit()
    except IntegrityError:
        # Another request with this Idempotency-Key committed between our lookup and our insert.
        session.rollback()
        earlier = None
        if idempotency_key is not None:
            earlier = service.replay(session, tenant_id, idempotency_key, service.request_hash(body))
        if earlier is None:
            raise
        job, created = earlier, False
    # Only after the commit: a worker must never receive a job id whose row it cannot read yet.
    if created:
        queue.publish_validate(settings, job.id)
    return Job.of(job)


def _metadata_filters(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` query parameters (the form the OpenAI client sends)."""
    filters = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            key = name[len("metadata[") : -1]
            if not 0 < len(key) <= 64 or len(value) > 512:
                raise BadRequest(
                    "metadata filters take keys of 1-64 and values of 0-512 characters", param=name
                )
            filters[key] = value
    if len(filters) > MAX_METADATA_FILTERS:
        raise BadRequest(f"at most {MAX_METADATA_FILTERS} metadata filters", param="metadata")
    return filters


@router.get("", responses=error_responses(Unauthorized, NotFound, BadRequest))
def list_jobs(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    after: Cursor = None,
    limit: Limit = 20,
    status: JobStatus | None = None,
) -> JobList:
    metadata = _metadata_filters(request)
    rows, has_more = service.page(
        session, tenant.id, after=after, limit=limit, status=status, metadata=metadata
    )
    return JobList.of([Job.of(job) for job in rows], has_more)


@router.get("/{job_id}", responses=error_responses(Unauthorized, NotFound))
def retrieve_job(job_id: JobId, session: SessionDep, tenant: TenantDep) -> Job:
    return Job.of(service.get(session, tenant.id, job_id))


@router.post("/{job_id}/cancel", responses=error_responses(Unauthorized, NotFound, Conflict))
def cancel_job(job_id: JobId, session: SessionDep, tenant: TenantDep) -> Job:
    job = service.cancel(session, tenant.id, job_id)
    session.commit()
    return Job.of(job)


@router.post("/{job_id}/pause", responses=error_responses(Unauthorized, NotFound, Conflict))
def pause_job(job_id: JobId, session: SessionDep, tenant: TenantDep) -> Job:
    """Pause: a queued job at once (``paused``); a running one (``pausing``) stops right after its next
    checkpoint is stored, so no step is lost. A paused job holds its place in the active-job quota."""
    job = service.pause(session, tenant.id, job_id)
    session.commit()
    return Job.of(job)


@router.post("/{job_id}/resume", responses=error_responses(Unauthorized, NotFound, Conflict))
def resume_job(job_id: JobId, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> Job:
    """Resume a paused job: queued again, it continues from its last checkpoint (a ``pausing`` job just
    keeps running)."""
    job, queued = service.resume(session, tenant.id, job_id)
    session.commit()
    if queued:  # only after the commit, as for a new job
        queue.publish_run(settings, job.id)
    return Job.of(job)


@router.delete("/{job_id}", responses=error_responses(Unauthorized, NotFound, JobNotFinished))
def delete_job(
    job_id: JobId, session: SessionDep, tenant: TenantDep, store: StoreDep, inference: InferenceDep
) -> JobDeleted:
    """Delete a finished job: its events, checkpoints and adapter (row and files) go with it."""
    adapter_ids = service.delete(session, tenant.id, store, job_id)
    session.commit()
    for adapter_id in adapter_ids:
        # Free this replica's copy now; every other replica refuses it at the row lookup.
        inference.evict(adapter_id)
    return JobDeleted(id=job_id, adapter_id=adapter_ids[0] if adapter_ids else None)


@router.get(
    "/{job_id}/events",
    response_model=JobEventList,
    responses=error_responses(Unauthorized, NotFound),
)
def list_events(
    job_id: JobId,
    session: SessionDep,
    tenant: TenantDep,
    after: Cursor = None,
    limit: Limit = 20,
    stream: bool = False,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> JobEventList | EventSourceResponse:
    """Newest first, or with ``stream=true`` a Server-Sent-Events stream, oldest first, that starts
    after ``after`` (or ``Last-Event-ID``) and ends with ``data: [DONE]`` once the job has finished."""
    tenant_id = tenant.id
    if stream:
        start = service.stream_start(session, tenant_id, job_id, after or last_event_id)
        session.rollback()  # end the read transaction: the stream polls in fresh ones
        return EventSourceResponse(_event_stream(session, tenant_id, job_id, start))
    rows, has_more = service.events_page(session, tenant_id, job_id, after=after, limit=limit)
    return JobEventList.of([JobEvent.of(e) for e in rows], has_more)


def _poll(
    session: Session, tenant_id: str, job_id: str, after_seq: int
) -> tuple[list[dict[str, str]], bool, int]:
    """One poll: the new events as SSE messages, whether the job had finished, the last seq seen."""
    try:
        events, finished = service.poll_events(session, tenant_id, job_id, after_seq, STREAM_BATCH)
        last = events[-1].seq if events else after_seq
        messages = [{"id": e.id, "data": JobEvent.of(e).model_dump_json()} for e in events]
        return messages, finished, last
    finally:
        # Each poll sees rows committed since the last one, and no connection is held while we sleep.
        session.rollback()


async def _event_stream(
    session: Session, tenant_id: str, job_id: str, after_seq: int
) -> AsyncIterator[dict[str, str]]:
    while True:
        try:
            events, finished, after_seq = await anyio.to_thread.run_sync(
                _poll, session, tenant_id, job_id, after_seq
            )
        except NotFound:
            return  # the job was deleted while we streamed it
        for message in events:
            yield message
        if len(events) == STREAM_BATCH:
            continue
        if finished:
            yield {"data": "[DONE]"}
            return
        await anyio.sleep(POLL_SECONDS)


@router.get("/{job_id}/checkpoints", responses=error_responses(Unauthorized, NotFound))
def list_checkpoints(
    job_id: JobId, session: SessionDep, tenant: TenantDep, after: Cursor = None, limit: Limit = 10
) -> CheckpointList:
    job, rows, has_more = service.checkpoints_page(session, tenant.id, job_id, after=after, limit=limit)
    return CheckpointList.of([Checkpoint.of(c, job) for c in rows], has_more)


@router.get(
    "/{job_id}/metrics",
    response_model_exclude_none=True,
    responses=error_responses(Unauthorized, NotFound),
)
def job_metrics(job_id: JobId, session: SessionDep, tenant: TenantDep) -> Metrics:
    """Curves: ``steps`` (step, epoch, train_loss, train_accuracy, lr), one point per optimizer step,
    and ``epochs`` (epoch, step, train_loss, valid_loss, valid_accuracy, …), one per finished epoch."""
    return service.metrics(session, tenant.id, job_id)
