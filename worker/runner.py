"""What a worker does with a job: validate its files, then train it into an adapter.

Every exit path of ``run_job`` leaves the job in a state (succeeded, failed, cancelled, or queued
again for another attempt); a worker that dies without one is found by the reconciler through its
stale heartbeat. All writes go through ``domain.jobs.lifecycle`` under the job's lease; the job's data
is fetched by ``worker.datasets``.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
from pathlib import Path
from typing import Any, cast

from domain.artifacts import ArtifactStore, checkpoints_key
from domain.db import session_scope, utcnow
from domain.ids import new_id
from domain.jobs import continuation, events, results
from domain.jobs import lifecycle as state
from domain.jobs import repository as jobs
from domain.jobs.lifecycle import Lease, LeaseLost, Publish
from domain.jobs.specs import JobSpec, job_spec
from domain.jobs.states import JobStatus
from domain.models import Adapter, File
from domain.queue import RUN_JOB
from domain.settings import Settings
from grft_core.adapters.format import load_adapter
from grft_core.data.loading import load_train_val
from grft_core.errors import DatasetRejected, GrftError, TrainingInterrupted
from grft_core.lm_pipeline import validate_lm_files
from grft_core.method.config import GRFTConfig
from grft_core.models.causal import CAUSAL_LM
from grft_core.models.registry import ModelRegistry
from grft_core.pipeline import train_to_folder
from worker.datasets import data_limits, data_uris, tenant_names
from worker.errors import PublicError, public_error
from worker.progress import CancelCheck, JobReporter, PauseRequested, ProgressWriter
from worker.transient import is_transient, retrying, wait_for_database

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Beats under the lease every ``heartbeat_seconds`` while the job runs, through phases that report
    no steps (loading, selection, evaluation); notices a cancel request or a lost lease."""

    def __init__(self, settings: Settings, lease: Lease) -> None:
        super().__init__(name=f"heartbeat-{lease.job_id}", daemon=True)
        self.url, self.lease = settings.database_url, lease
        self.interval = settings.heartbeat_seconds
        self.stopped = threading.Event()
        self.cancel = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with session_scope(self.url) as session:
                    if state.heartbeat(session, self.lease) == JobStatus.CANCELLING:
                        self.cancel.set()
            except LeaseLost:
                self.lost.set()
                return
            except Exception:  # noqa: BLE001 - a database blip: the next beat tries again
                log.warning("heartbeat of %s failed", self.lease.job_id, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=30)


def _config(settings: Settings, job: JobSpec) -> GRFTConfig:
    params = dict(job.method)
    params.setdefault("seed", job.seed)
    if not params.get("checkpoint_every"):
        params["checkpoint_every"] = settings.checkpoint_every
    return GRFTConfig.from_dict(params)


# --- validation -------------------------------------------------------------------------------------


def validate_job(settings: Settings, job_id: str, publish: Publish) -> str:
    """validating_files → queued (then publish ``grft.run_job``), or failed with ``user_error``."""
    url = settings.database_url
    with session_scope(url) as session:
        lease = state.claim_validation(session, job_id, settings.lease_seconds)
        if lease is None:
            return "skipped"
        job = job_spec(session, job_id)
        events.add_event(session, job_id, "Validating training file")
    heartbeat = Heartbeat(settings, lease)
    heartbeat.start()
    # A cancel during validation ends the job at once; the check notices its lease is gone and stops.
    should_stop = CancelCheck(settings, lease, heartbeat)
    progress = ProgressWriter(settings, lease, heartbeat)
    work = _work_dir(settings, lease, "validate")
    names = tenant_names(job)
    try:
        _fresh(work, job_id)
        config = _config(settings, job)
        spec = ModelRegistry(settings.model_dir).get(job.model)
        progress.validating(0)
        train_uri, val_uri = data_uris(settings, job, work, should_stop)
        names = tenant_names(job, train_uri, val_uri)
        progress.validating(1)
        if spec.kind == CAUSAL_LM:
            # Chat or prompt/completion JSONL: every line, and the chat template's split into turns.
            summary = validate_lm_files(
                spec, train_uri, val_uri, config, limits=data_limits(settings), should_stop=should_stop
            )
        else:
            train, val = load_train_val(
                train_uri,
                val_uri,
                val_fraction=config.val_fraction,
                seed=config.seed,
                limits=data_limits(settings),
                should_stop=should_stop,
            )
            progress.validating(2)
            if spec.modality != train.modality:
                raise DatasetRejected(
                    f"model {spec.name!r} takes {spec.modality} inputs "
                    f"but training_file holds {train.modality}",
                    param="training_file",
                )
            summary = {
                "train_examples": len(train),
                "validation_examples": len(val),
                "classes": train.classes,
                "modality": train.modality,
            }
            # Counted once here, where the data is read anyway: the job's trained_tokens at success.
            tokens = results.tokens_per_epoch(spec, train.items, config.max_length, should_stop)
            if tokens is not None:
                summary["train_tokens_per_epoch"] = tokens
            del train, val
        progress.validating(3)
    except TrainingInterrupted as exc:
        heartbeat.stop()
        if heartbeat.lost.is_set():
            return _lost(settings, job)
        error = _public(settings, job, lease, exc, names, work, f"validation of {job_id}")
        return _settle(settings, lease, error.code, error.message, error.param)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the job must not stay in validating_files
        heartbeat.stop()
        error = _public(settings, job, lease, exc, names, work, f"validation of {job_id}")
        return _settle(settings, lease, error.code, error.message, error.param)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    heartbeat.stop()
    message = f"Files validated ({summary['train_examples']} training examples), moving job to queued state"
    with session_scope(url) as session:
        queued = state.files_valid(session, lease, message, summary)
        if not queued:
            state.ack_cancel(session, lease)
    if queued:
        publish(RUN_JOB, job_id)
        return JobStatus.QUEUED
    return JobStatus.CANCELLED


def _work_dir(settings: Settings, lease: Lease, purpose: str) -> Path:
    """The local folder of this lease (one per lease: two workers on one host never share one)."""
    return settings.home / "work" / f"{lease.job_id}-{purpose}-{lease.token[:12]}"


def _fresh(work: Path, job_id: str) -> None:
    """Create ``work``, removing the job's older folders: their leases are void (a worker still using
    one stops at its next write), and a killed worker leaves its folder behind."""
    for old in work.parent.glob(f"{job_id}-*"):
        shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True)


def _public(
    settings: Settings,
    job: JobSpec,
    lease: Lease,
    exc: BaseException,
    names: dict[str, str],
    work: Path,
    context: str,
) -> PublicError:
    """What the tenant reads about ``exc`` (see ``worker.errors``): no SQL, stack, token or local path."""
    roots: list[str | Path] = [work, settings.home, settings.artifact_url, str(settings.model_dir)]
    return public_error(exc, names=names, roots=roots, secrets=[lease.token], context=context)


def _lost(settings: Settings, job: JobSpec) -> str:
    """The outcome when the work stopped because the lease went: ``cancelled`` when a cancel ended the
    job (a validating job is cancelled at once), else ``lease_lost`` (another worker holds it now)."""
    try:
        with session_scope(settings.database_url) as session:
            row = jobs.get(session, job.tenant_id, job.id)
            status = None if row is None else row.status
    except Exception:  # noqa: BLE001 - only the return value depends on it
        log.warning("could not read the state of %s", job.id, exc_info=True)
        return "lease_lost"
    return JobStatus.CANCELLED if status == JobStatus.CANCELLED else "lease_lost"


def _settle(
    settings: Settings,
    lease: Lease,
    code: str,
    message: str,
    param: str | None,
    retry: bool = False,
) -> str:
    def end() -> JobStatus | None:
        with session_scope(settings.database_url) as session:
            return state.end_attempt(session, lease, code=code, message=message, param=param, retry=retry)

    status = retrying(end, budget_s=settings.lease_seconds, what=f"ending the attempt on {lease.job_id}")
    return status or "lease_lost"


# --- training ---------------------------------------------------------------------------------------


def apply_torch_threads(settings: Settings) -> None:
    """Use ``settings.torch_threads`` intra-op threads in this process, when set."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def run_job(settings: Settings, job_id: str, publish: Publish) -> str:
    """Claim a queued job and train it; returns the state the job was left in (or ``skipped``)."""
    apply_torch_threads(settings)
    with session_scope(settings.database_url) as session:
        lease = state.claim(session, job_id)
        if lease is None:
            return "skipped"
        job = job_spec(session, job_id)
        events.add_event(
            session,
            job_id,
            f"Fine-tuning job started (attempt {lease.attempt})",
            data={"attempt": lease.attempt},
        )
    heartbeat = Heartbeat(settings, lease)
    heartbeat.start()
    work = _work_dir(settings, lease, "run")
    try:
        outcome = _attempt_until_done(settings, job, lease, heartbeat, work)
    except LeaseLost:
        log.warning("lost the lease on %s; another worker owns it now", job_id)
        outcome = "lease_lost"
    except TrainingInterrupted as exc:
        # Raised by our checks on a cancel request (end_attempt honours it) or a lost lease; from
        # anywhere else it is a crash like any other.
        heartbeat.stop()
        if heartbeat.lost.is_set():
            log.warning("lost the lease on %s; another worker owns it now", job_id)
            outcome = "lease_lost"
        elif heartbeat.cancel.is_set():
            outcome = _settle(settings, lease, "error", "the job was cancelled", None, retry=True)
        elif isinstance(exc, PauseRequested):
            outcome = _pause(settings, lease, exc.step)
        else:
            error = _public(settings, job, lease, exc, tenant_names(job), work, f"attempt of {job_id}")
            outcome = _settle(settings, lease, error.code, error.message, None, retry=True)
    except GrftError as exc:
        heartbeat.stop()
        error = _public(settings, job, lease, exc, tenant_names(job), work, f"attempt of {job_id}")
        outcome = _settle(settings, lease, error.code, error.message, error.param)
    except Exception as exc:  # noqa: BLE001 - retried while attempts remain, then failed with code "error"
        heartbeat.stop()
        if is_transient(exc):
            # The database stayed away longer than the lease: not the job's fault, so no attempt is
            # judged. Hand it back if the database answers again; else the reconciler re-queues it.
            log.error("the database stayed out of reach during %s; handing the job back", job_id)
            outcome = _hand_back(settings, lease)
        else:
            context = f"attempt {lease.attempt} of {job_id}"
            error = _public(settings, job, lease, exc, tenant_names(job), work, context)
            outcome = _settle(settings, lease, error.code, error.message, None, retry=True)
    except BaseException:
        # Shutdown (SystemExit, KeyboardInterrupt): hand the job back rather than leave it running.
        heartbeat.stop()
        with session_scope(settings.database_url) as session:
            released = state.requeue(session, lease)
        if released:
            publish(RUN_JOB, job_id)
        raise
    finally:
        heartbeat.stop()
        shutil.rmtree(work, ignore_errors=True)
        _free_memory()
    if outcome == JobStatus.QUEUED:
        publish(RUN_JOB, job_id)
    return outcome


# How many times one attempt starts over after a database cut before the attempt is given up.
MAX_DATABASE_RESTARTS = 5


def _attempt_until_done(
    settings: Settings, job: JobSpec, lease: Lease, heartbeat: Heartbeat, work: Path
) -> str:
    """``_attempt``, started over under the same lease (so the same attempt, from its last checkpoint)
    when the database went away mid-run: a brief cut must not cost the job one of its attempts."""
    restarts = 0
    while True:
        try:
            return _attempt(settings, job, lease, heartbeat, work)
        except Exception as exc:
            done = heartbeat.lost.is_set() or heartbeat.stopped.is_set()  # lost, or past training
            if not is_transient(exc) or restarts >= MAX_DATABASE_RESTARTS or done:
                raise
            restarts += 1
            log.warning(
                "attempt %d of %s: the database went away (%s); resuming from the last checkpoint",
                lease.attempt, job.id, type(exc).__name__,
            )  # fmt: skip
            wait_for_database(settings.database_url, budget_s=settings.lease_seconds)


def _hand_back(settings: Settings, lease: Lease) -> str:
    """Queue the job again without judging the attempt, if the database answers within the lease."""

    def release() -> bool:
        with session_scope(settings.database_url) as session:
            return state.requeue(session, lease)

    try:
        released = retrying(release, budget_s=settings.lease_seconds, what=f"handing back {lease.job_id}")
    except Exception as exc:  # noqa: BLE001 - still unreachable: the stale lease is the reconciler's
        if not is_transient(exc):
            raise
        return "database_unavailable"
    return JobStatus.QUEUED if released else "lease_lost"


def _attempt(settings: Settings, job: JobSpec, lease: Lease, heartbeat: Heartbeat, work: Path) -> str:
    _fresh(work, job.id)
    store = ArtifactStore(settings.artifact_url)
    checkpoints = work / "checkpoints"
    # Resume from whatever a previous attempt (on any machine) left in the store.
    if store.exists(checkpoints_key(job.id)):
        store.get_folder(checkpoints_key(job.id), checkpoints)
    config = _config(settings, job)
    should_stop = CancelCheck(settings, lease, heartbeat)
    reporter = JobReporter(settings, lease, store, heartbeat)
    reporter.announce_resume(checkpoints)
    reporter.preparing()
    train_uri, val_uri = data_uris(settings, job, work / "data", should_stop)
    out = work / "adapter"
    registry = ModelRegistry(settings.model_dir)
    parent = _parent(settings, job, store, registry, work, checkpoints) if job.init_from else None
    metrics = train_to_folder(
        job.model,
        train_uri,
        out,
        config,
        val_uri=val_uri,
        # Duck-typed: train_to_folder asks a registry for get() and load() only.
        registry=cast(ModelRegistry, parent) if parent is not None else registry,
        callbacks=[reporter],
        checkpoint_dir=checkpoints,
        limits=data_limits(settings),
        should_stop=should_stop,
    )
    heartbeat.stop()
    if heartbeat.cancel.is_set():
        raise TrainingInterrupted("a cancel was requested")
    if parent is not None and job.init_from is not None:
        continuation.combine(out, parent.parent, job.init_from)
    return _publish_adapter(settings, job, lease, store, out, metrics)


def _parent(
    settings: Settings,
    job: JobSpec,
    store: ArtifactStore,
    registry: ModelRegistry,
    work: Path,
    checkpoints: Path,
) -> continuation.ContinuingRegistry:
    """The registry that loads the base with the parent's deltas (``domain.jobs.continuation``), the
    parent's rows written as the run's selection."""
    assert job.init_from is not None
    with session_scope(settings.database_url) as session:
        key = continuation.parent_key(session, store, registry, job.tenant_id, job.init_from)
        labels = results.validation_summary(session, job.id).get("classes")
    parent = load_adapter(store.get_folder(key, work / "parent"))
    continuation.seed_selection(parent, checkpoints)
    return continuation.ContinuingRegistry(registry, parent, labels)


def _pause(settings: Settings, lease: Lease, step: int) -> str:
    """The attempt stopped after its checkpoint at ``step`` because a pause was asked: paused (or
    whatever a cancel asked meanwhile makes of it)."""

    def ack() -> bool:
        with session_scope(settings.database_url) as session:
            return state.ack_pause(session, lease, step=step)

    if retrying(ack, budget_s=settings.lease_seconds, what=f"pausing {lease.job_id}"):
        return JobStatus.PAUSED
    return _settle(settings, lease, "error", "the job was paused", None, retry=True)


def _publish_adapter(
    settings: Settings, job: JobSpec, lease: Lease, store: ArtifactStore, out: Path, metrics: dict[str, Any]
) -> str:
    """Upload the adapter, then make it visible and end the job in one commit."""
    import json

    adapter_id = new_id("adapter")
    key = f"adapters/{adapter_id}"
    uri = store.put_folder(key, out)
    config = json.loads((out / "adapter_config.json").read_text())
    adapter = Adapter(
        id=adapter_id,
        tenant_id=job.tenant_id,
        job_id=job.id,
        base_model=job.model,
        method=str(config.get("method", job.method.get("method", "grft"))),
        uri=uri,
        bytes=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        config=events.clean_json(config),
        created_at=utcnow(),
    )

    result_file = _results_file(settings, job, store, metrics)
    result_key = store.key_of(result_file.uri) if result_file is not None else None

    def commit() -> JobStatus | None:
        with session_scope(settings.database_url) as session:
            if session.get(Adapter, adapter_id) is not None:  # an earlier try committed; its reply was lost
                return JobStatus.SUCCEEDED
            outcome = state.complete(session, lease, adapter, metrics, int(metrics["trainable_params"]))
            if outcome == JobStatus.SUCCEEDED and result_file is not None:
                session.add(File(**{c: getattr(result_file, c) for c in _FILE_COLUMNS}))
            return outcome

    try:
        outcome = retrying(commit, budget_s=settings.lease_seconds, what=f"publishing {adapter_id}")
    except BaseException as exc:
        if not is_transient(exc):  # a commit that may have happened keeps the files its row names
            store.delete(key)
            if result_key:
                store.delete(result_key)
        raise
    if outcome != JobStatus.SUCCEEDED:
        store.delete(key)
        if result_key:
            store.delete(result_key)
    return outcome or "lease_lost"


_FILE_COLUMNS = ("id", "tenant_id", "filename", "purpose", "bytes", "sha256", "uri", "created_at")


def _results_file(
    settings: Settings, job: JobSpec, store: ArtifactStore, metrics: dict[str, Any]
) -> File | None:
    """The job's results CSV, stored (its row is added with the success), its id in
    ``metrics["result_files"]``; and ``metrics["trained_tokens"]`` for text jobs unless the trainer
    counted them itself. Reporting only: a failure here costs the job nothing but the file."""
    try:
        with session_scope(settings.database_url) as session:
            content = results.results_csv(session, job.id)
            per_epoch = results.validation_summary(session, job.id).get("train_tokens_per_epoch")
        if isinstance(per_epoch, int) and metrics.get("trained_tokens") is None:
            metrics["trained_tokens"] = per_epoch * int(_config(settings, job).epochs)
        row = results.store_results_file(store, job.tenant_id, job.id, content)
    except Exception:  # noqa: BLE001 - the adapter matters more than its report
        log.warning("could not write the results file of %s", job.id, exc_info=True)
        return None
    metrics["result_files"] = [row.id]
    return row


def _free_memory() -> None:
    # A worker lives for many jobs: give the allocator's cached GPU blocks back between them.
    gc.collect()
    import torch

    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()
