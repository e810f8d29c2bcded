"""Fine-tuning jobs: create (validated, idempotent, within quota), read, cancel, delete, events and
metrics.

Services never commit and never publish: the route commits, then tells the broker, so a worker can
never receive a job id whose row is not visible yet.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from api.errors import BadRequest, Conflict, JobNotFinished, NotFound, QuotaExceeded
from api.jobs import reporting, schemas
from domain.artifacts import ArtifactStore, job_key
from domain.dataset_uris import check_dataset_uri
from domain.db import utcnow
from domain.files import repository as files_repository
from domain.ids import new_id
from domain.jobs import lifecycle, model_ids, repository
from domain.jobs.integrations import check_integrations
from domain.jobs.models import Job, JobCheckpoint, JobEvent
from domain.jobs.states import TERMINAL, UNFINISHED
from domain.settings import Settings
from grft_core.errors import ConfigError, ModelNotFound
from grft_core.method import GRFTConfig, public_name
from grft_core.models.registry import ModelRegistry, is_builtin

# --- create ---------------------------------------------------------------------------------------


def request_hash(body: schemas.JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_config(body: schemas.JobCreate, seed: int) -> dict[str, Any]:
    """The request's knobs as a validated ``GRFTConfig`` dict (what ``Job.method`` stores).

    The request models use the config's public field names, which ``GRFTConfig`` accepts as they are.

    Raises:
        ConfigError: a value ``GRFTConfig`` refuses; ``param`` is the request path of the field.
    """
    method_type = body.method.type if body.method is not None else "grft"
    values: dict[str, Any] = {}
    if body.hyperparameters is not None:
        values.update(body.hyperparameters.model_dump(exclude_none=True))
    if body.method is not None:  # the method's own hyperparameters win over the legacy ones
        values.update(body.method.hyperparameters.model_dump(exclude_none=True))
    auto = reporting.pop_auto(values)  # "auto": the worker chooses (grft_core.method.autotune)
    if auto:
        values["auto"] = auto
    multiplier = values.pop("learning_rate_multiplier", None)
    if multiplier is not None and "learning_rate" not in values:
        values["learning_rate"] = schemas.DEFAULT_LR * multiplier
    values.update(method=schemas.LIBRARY_METHOD[method_type], seed=seed)
    try:
        return GRFTConfig.from_dict(values).to_dict()
    except ConfigError as exc:
        if exc.param == "seed":
            param = "seed"
        else:
            info = GRFTConfig.model_fields.get(exc.param or "")
            name = public_name(exc.param, info) if exc.param and info else exc.param
            param = f"method.{method_type}.hyperparameters.{name}"
        raise ConfigError(exc.message, param=param) from exc


def check_model(settings: Settings, name: str) -> None:
    """Raises ``ModelNotFound`` for a name the registry does not know.

    Built-in names are accepted without writing their weights into the store: the worker does that
    on first use, outside a request.
    """
    if not is_builtin(name):  # a built-in causal LM takes about a minute to convert
        ModelRegistry(settings.model_dir).get(name)


def resolve_model(
    session: Session, tenant_id: str, settings: Settings, body: schemas.JobCreate
) -> tuple[str, dict[str, Any] | None]:
    """The base model a job trains, and what it continues from when ``model`` names a fine-tuned model
    or a checkpoint of the tenant's (``Job.init_from``): its base is trained, starting from its rows.

    Raises:
        ModelNotFound: an unknown base model, or no such fine-tuned model or checkpoint of this tenant.
        BadRequest: a fine-tuned model that is not GRFT (only GRFT rows can be continued), or a method
            other than GRFT for the continuation.
    """
    if not model_ids.looks_fine_tuned(body.model):
        check_model(settings, body.model)
        return body.model, None
    resolved = model_ids.resolve(session, tenant_id, body.model)
    if resolved is None:
        raise ModelNotFound(
            f"no fine-tuned model or checkpoint {body.model!r} in this organization", param="model"
        )
    method = resolved.adapter.method if resolved.adapter is not None else None
    if method is None and resolved.job is not None:
        method = str((resolved.job.method or {}).get("method", "grft"))
    if method != "grft":
        raise BadRequest(
            f"only GRFT models can be continued; {body.model!r} was trained with {method!r}", param="model"
        )
    if body.method is not None and body.method.type != "grft":
        raise BadRequest(
            "a job that continues a GRFT model trains with GRFT: its rows are the ones it continues",
            param="method.type",
        )
    check_model(settings, resolved.base_model)
    return resolved.base_model, model_ids.origin(resolved)


def check_dataset(session: Session, tenant_id: str, settings: Settings, value: str, param: str) -> str:
    """Accept a file id of this tenant, or a URI that ``domain.dataset_uris`` allows.

    Raises:
        NotFound: an unknown file id (another tenant's included).
        DatasetRejected: any other string.
    """
    if value.startswith("file-"):
        if files_repository.get(session, tenant_id, value) is None:
            raise NotFound(f"no file {value!r}", param=param)
        return value
    return check_dataset_uri(value, settings, field=param, tenant=tenant_id).uri


def create(
    session: Session, tenant_id: str, settings: Settings, body: schemas.JobCreate, idempotency_key: str | None
) -> tuple[Job, bool]:
    """A new job in ``validating_files``, or the job an earlier request with the same key made.

    Returns ``(job, created)``. Raises ``Conflict`` for a reused key with another body,
    ``QuotaExceeded`` past the tenant's limits, and the validation errors of the fields.
    """
    digest = request_hash(body)
    repository.lock_tenant(session, tenant_id)
    if idempotency_key is not None:
        earlier = replay(session, tenant_id, idempotency_key, digest)
        if earlier is not None:
            return earlier, False
    base_model, init_from = resolve_model(session, tenant_id, settings, body)
    training_file = check_dataset(session, tenant_id, settings, body.training_file, "training_file")
    validation_file = None
    if body.validation_file is not None:
        validation_file = check_dataset(session, tenant_id, settings, body.validation_file, "validation_file")
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    config = build_config(body, seed)
    check_quota(session, tenant_id, settings)
    job = Job(
        id=new_id("ftjob"),
        tenant_id=tenant_id,
        model=base_model,
        init_from=init_from,
        training_file=training_file,
        validation_file=validation_file,
        method=config,
        seed=seed,
        suffix=body.suffix,
        metadata_=dict(body.metadata or {}),
        created_at=utcnow(),
        max_attempts=settings.max_attempts,
        # Publication time as far as the reconciler knows; it republishes jobs left waiting too long.
        enqueued_at=utcnow(),
        idempotency_key=idempotency_key,
        request_hash=digest,
        integrations=check_integrations(body.integrations, settings),
    )
    created = _event(job.id, f"Created fine-tuning job: {job.id}")
    repository.insert(session, job, [created, _event(job.id, f"Validating training file: {training_file}")])
    return job, True


def check_quota(session: Session, tenant_id: str, settings: Settings) -> None:
    """Raises ``QuotaExceeded`` (429 ``quota_exceeded``) when the tenant already has
    ``max_active_jobs_per_tenant`` jobs validating, queued or running, or stores
    ``max_jobs_per_tenant`` jobs in all; finished jobs free the first when they end, the second when
    they are deleted. Called under ``lock_tenant``, so two requests cannot both take the last place."""
    active = repository.count(session, tenant_id, statuses=UNFINISHED)
    if active >= settings.max_active_jobs_per_tenant:
        raise QuotaExceeded(
            f"this organization already has {active} jobs validating, queued or running, its limit; "
            "wait for one to finish or cancel one",
            param="max_active_jobs",
        )
    stored = repository.count(session, tenant_id)
    if stored >= settings.max_jobs_per_tenant:
        raise QuotaExceeded(
            f"this organization stores {stored} fine-tuning jobs, its limit; delete finished ones "
            "(DELETE /v1/fine_tuning/jobs/{id}) to make room",
            param="max_jobs",
        )


def replay(session: Session, tenant_id: str, idempotency_key: str, digest: str) -> Job | None:
    """The job made under ``idempotency_key``, if any; ``Conflict`` if its request differed."""
    earlier = repository.by_idempotency_key(session, tenant_id, idempotency_key)
    if earlier is not None and earlier.request_hash != digest:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body", param="Idempotency-Key"
        )
    return earlier


def _event(job_id: str, message: str, **fields: Any) -> JobEvent:
    return JobEvent(id=new_id("ftevent"), job_id=job_id, created_at=utcnow(), message=message, **fields)


# --- read and cancel ------------------------------------------------------------------------------


def get(session: Session, tenant_id: str, job_id: str) -> Job:
    job = repository.get(session, tenant_id, job_id)
    if job is None:
        raise NotFound(f"no fine-tuning job {job_id!r}", param="fine_tuning_job_id")
    return job


def page(
    session: Session,
    tenant_id: str,
    *,
    after: str | None,
    limit: int,
    status: str | None,
    metadata: Mapping[str, str],
) -> tuple[list[Job], bool]:
    cursor = None
    if after is not None:
        cursor = repository.get(session, tenant_id, after)
        if cursor is None:
            raise NotFound(f"no fine-tuning job {after!r} to page after", param="after")
    return repository.page(session, tenant_id, after=cursor, limit=limit, status=status, metadata=metadata)


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """Cancel now if the job has not started; ask a running one to stop (``cancelling``).

    Raises:
        NotFound: no such job for this tenant.
        Conflict: the job has already finished.
    """
    return lifecycle.cancel(session, tenant_id, job_id)


def pause(session: Session, tenant_id: str, job_id: str) -> Job:
    """Pause a queued job now; a running one stops right after its next checkpoint.

    Raises:
        NotFound: no such job for this tenant.
        Conflict: the job is validating its files, cancelling or finished.
    """
    return lifecycle.pause(session, tenant_id, job_id)


def resume(session: Session, tenant_id: str, job_id: str) -> tuple[Job, bool]:
    """Queue a paused job again (True: publish its run once committed).

    Raises:
        NotFound: no such job for this tenant.
        Conflict: the job is not paused or pausing.
    """
    return lifecycle.resume(session, tenant_id, job_id)


def delete(session: Session, tenant_id: str, store: ArtifactStore, job_id: str) -> list[str]:
    """Delete a finished job with its events, checkpoints and adapter; returns the deleted adapters'
    ids, which the caller makes the inference caches forget once the deletion is committed.

    Rows go first (flushed, committed by the route), then files: if removing a file fails, the error
    rolls the rows back too, so the job stays listed and a retried DELETE finishes the work.

    Raises:
        NotFound: no such job for this tenant (another tenant's included).
        JobNotFinished: the job is validating, queued, running or cancelling.
    """
    job = get(session, tenant_id, job_id)
    if job.status not in TERMINAL:
        raise JobNotFinished(
            f"job {job_id} is {job.status}; only a finished job (succeeded, failed or cancelled) can be "
            "deleted: cancel it first and wait for it to end",
            param="fine_tuning_job_id",
        )
    adapters = repository.adapters_of(session, tenant_id, job)
    adapter_keys = [store.key_of(a.uri) or f"adapters/{a.id}" for a in adapters]
    if not repository.delete_finished(session, tenant_id, job_id, [a.id for a in adapters]):
        raise NotFound(f"no fine-tuning job {job_id!r}", param="fine_tuning_job_id")  # deleted meanwhile
    for key in [job_key(job_id), *adapter_keys]:
        store.delete(key)
    return [a.id for a in adapters]


# --- events, checkpoints, metrics -----------------------------------------------------------------


def events_page(
    session: Session, tenant_id: str, job_id: str, *, after: str | None, limit: int
) -> tuple[list[JobEvent], bool]:
    get(session, tenant_id, job_id)
    before_seq = None
    if after is not None:
        cursor = repository.event(session, tenant_id, job_id, after)
        if cursor is None:
            raise NotFound(f"no event {after!r} in job {job_id}", param="after")
        before_seq = cursor.seq
    return repository.events_page(session, tenant_id, job_id, before_seq=before_seq, limit=limit)


def stream_start(session: Session, tenant_id: str, job_id: str, after: str | None) -> int:
    """The seq a stream starts after: that of event ``after``, or 0 for the whole history."""
    get(session, tenant_id, job_id)
    if after is None:
        return 0
    cursor = repository.event(session, tenant_id, job_id, after)
    if cursor is None:
        raise NotFound(f"no event {after!r} in job {job_id}", param="after")
    return cursor.seq


def poll_events(
    session: Session, tenant_id: str, job_id: str, after_seq: int, limit: int = 100
) -> tuple[list[JobEvent], bool]:
    """Events newer than ``after_seq`` (oldest first) and whether the job had finished before they
    were read, so that a stream which stops on ``True`` has sent every event."""
    finished = get(session, tenant_id, job_id).status in TERMINAL
    return repository.events_since(session, tenant_id, job_id, after_seq=after_seq, limit=limit), finished


def checkpoints_page(
    session: Session, tenant_id: str, job_id: str, *, after: str | None, limit: int
) -> tuple[Job, list[JobCheckpoint], bool]:
    """The job and a page of its checkpoints, latest step first."""
    job = get(session, tenant_id, job_id)
    cursor = None
    if after is not None:
        cursor = repository.checkpoint(session, tenant_id, job_id, after)
        if cursor is None:
            raise NotFound(f"no checkpoint {after!r} in job {job_id}", param="after")
    rows, has_more = repository.checkpoints_page(session, tenant_id, job_id, after=cursor, limit=limit)
    return job, rows, has_more


def metrics(session: Session, tenant_id: str, job_id: str) -> schemas.Metrics:
    """Per-step and per-epoch curves from the job's ``metrics`` events (``reporting.build_metrics``)."""
    get(session, tenant_id, job_id)
    return reporting.build_metrics(repository.metric_data(session, tenant_id, job_id))
