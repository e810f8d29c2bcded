"""What a worker does with a job: validate its files, then train it into an adapter.

Every exit path of ``run_job`` leaves the job in a state (succeeded, failed, cancelled, or queued
again for another attempt); a worker that dies without one is found by the reconciler through its
stale heartbeat. All writes go through ``domain.jobs.lifecycle`` under the job's lease.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from sqlalchemy.orm import Session

from domain.artifacts import ArtifactStore
from domain.db import session_scope, utcnow
from domain.ids import new_id
from domain.jobs import lifecycle as state
from domain.jobs.lifecycle import ACTIVE, JobSpec, Lease, LeaseLost, Publish
from domain.models import Adapter
from domain.queue import RUN_JOB
from domain.settings import Settings
from grft_core.data.loading import load_train_val
from grft_core.errors import DatasetRejected, GrftError, TrainingInterrupted
from grft_core.method.config import GRFTConfig
from grft_core.models.registry import ModelRegistry
from grft_core.pipeline import train_to_folder
from worker.progress import JobReporter, checkpoint_key

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "https")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".csv", ".jsonl", ".ndjson", ".parquet")


class Heartbeat(threading.Thread):
    """Beats under the lease every ``heartbeat_seconds`` while the job runs, through phases that report
    no steps (loading, selection, evaluation); notices a cancel request or a lost lease."""

    def __init__(self, settings: Settings, lease: Lease, statuses: tuple[str, ...]) -> None:
        super().__init__(name=f"heartbeat-{lease.job_id}", daemon=True)
        self.url, self.lease, self.statuses = settings.database_url, lease, statuses
        self.interval = settings.heartbeat_seconds
        self.stopped = threading.Event()
        self.cancel = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with session_scope(self.url) as session:
                    if state.beat(session, self.lease, self.statuses) == "cancelling":
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


# --- data -------------------------------------------------------------------------------------------


def _suffix(filename: str) -> str:
    lowered = filename.lower()
    return next((s for s in _ARCHIVE_SUFFIXES if lowered.endswith(s)), "")


def _uploaded_copy(
    settings: Settings, session: Session, job: JobSpec, ref: str, field: str, dest: Path
) -> str:
    """A local path, named ``<file-id><suffix>`` (the suffix tells the format), for an uploaded file."""
    record = state.tenant_file(session, job.tenant_id, ref)
    if record is None:
        raise DatasetRejected(f"{field} {ref} does not exist", param=field)
    store = ArtifactStore(settings.artifact_url)
    target = dest / f"{record.id}{_suffix(record.filename)}"
    dest.mkdir(parents=True, exist_ok=True)
    if target.exists():  # the same file given as training and validation data
        return target.as_uri()
    key = record.uri[len(store.url) + 1 :] if record.uri.startswith(store.url + "/") else None
    local = store.local_path(key) if key else None
    if local is not None and local.exists():
        target.symlink_to(local)
    elif key is not None:
        with store.open(key) as source, target.open("wb") as out:
            shutil.copyfileobj(source, out)
    else:
        raise DatasetRejected(f"{field} {ref} is not in this service's artifact store", param=field)
    return target.as_uri()


def _allowed(settings: Settings, uri: str, field: str) -> str:
    """The schemes of DESIGN §6 only; local paths only under ``dataset_roots``.

    The API checks the same before it accepts a job; the worker checks again because it is the one
    that reads, and a row may predate a change of the allowed roots.
    """
    parts = urlsplit(uri)
    if "://" in uri and parts.scheme != "file":
        if parts.scheme not in REMOTE_SCHEMES:
            raise DatasetRejected(f"{field}: the {parts.scheme}:// scheme is not allowed", param=field)
        return uri
    path = Path(url2pathname(parts.path) if "://" in uri else uri).resolve()
    if not any(path.is_relative_to(root.resolve()) for root in settings.dataset_roots):
        raise DatasetRejected(f"{field}: {uri} is not under an allowed dataset root", param=field)
    return uri


def _data_uris(settings: Settings, job: JobSpec, dest: Path) -> tuple[str, str | None]:
    uris: list[str | None] = []
    with session_scope(settings.database_url) as session:
        for field, ref in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if ref is None:
                uris.append(None)
            elif ref.startswith("file-"):
                uris.append(_uploaded_copy(settings, session, job, ref, field, dest))
            else:
                uris.append(_allowed(settings, ref, field))
    train = uris[0]
    assert train is not None
    return train, uris[1]


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
        job = state.job_spec(session, job_id)
        state.add_event(session, job_id, "Validating training file")
    heartbeat = Heartbeat(settings, lease, ("validating_files", "cancelling"))
    heartbeat.start()
    work = _work_dir(settings, lease, "validate")
    try:
        _fresh(work, job_id)
        config = _config(settings, job)
        spec = ModelRegistry(settings.model_dir).get(job.model)
        train_uri, val_uri = _data_uris(settings, job, work)
        train, val = load_train_val(train_uri, val_uri, val_fraction=config.val_fraction, seed=config.seed)
        if spec.modality != train.modality:
            raise DatasetRejected(
                f"model {spec.name!r} takes {spec.modality} inputs but training_file holds {train.modality}",
                param="training_file",
            )
        summary = {
            "train_examples": len(train),
            "validation_examples": len(val),
            "classes": train.classes,
            "modality": train.modality,
        }
        del train, val
    except GrftError as exc:
        heartbeat.stop()
        return _settle(settings, lease, "user_error", exc.message, exc.param, ("validating_files",))
    except Exception as exc:  # noqa: BLE001 - whatever broke, the job must not stay in validating_files
        heartbeat.stop()
        log.exception("validation of %s failed", job_id)
        return _settle(settings, lease, "error", _describe(exc), None, ("validating_files",))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    heartbeat.stop()
    message = f"Files validated ({summary['train_examples']} training examples), moving job to queued state"
    with session_scope(url) as session:
        queued = state.mark_queued(session, lease, message, summary)
        if not queued:
            state.settle_cancel(session, lease)
    if queued:
        publish(RUN_JOB, job_id)
        return "queued"
    return "cancelled"


def _work_dir(settings: Settings, lease: Lease, purpose: str) -> Path:
    """The local folder of this lease (one per lease: two workers on one host never share one)."""
    return settings.home / "work" / f"{lease.job_id}-{purpose}-{lease.token[:12]}"


def _fresh(work: Path, job_id: str) -> None:
    """Create ``work``, removing the job's older folders: their leases are void (a worker still using
    one stops at its next write), and a killed worker leaves its folder behind."""
    for old in work.parent.glob(f"{job_id}-*"):
        shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True)


def _describe(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"[:1000]


def _settle(
    settings: Settings,
    lease: Lease,
    code: str,
    message: str,
    param: str | None,
    from_statuses: tuple[str, ...] = ACTIVE,
    retry: bool = False,
) -> str:
    with session_scope(settings.database_url) as session:
        status = state.settle_error(
            session, lease, code=code, message=message, param=param, retry=retry, from_statuses=from_statuses
        )
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
        lease = state.claim_run(session, job_id)
        if lease is None:
            return "skipped"
        job = state.job_spec(session, job_id)
        state.add_event(
            session,
            job_id,
            f"Fine-tuning job started (attempt {lease.attempt})",
            data={"attempt": lease.attempt},
        )
    heartbeat = Heartbeat(settings, lease, ACTIVE)
    heartbeat.start()
    work = _work_dir(settings, lease, "run")
    try:
        outcome = _attempt(settings, job, lease, heartbeat, work)
    except LeaseLost:
        log.warning("lost the lease on %s; another worker owns it now", job_id)
        outcome = "lease_lost"
    except TrainingInterrupted as exc:
        # Raised by our reporter on a cancel request; from anywhere else it is a crash like any other.
        heartbeat.stop()
        outcome = _settle(settings, lease, "error", _describe(exc), None, retry=True)
    except GrftError as exc:
        heartbeat.stop()
        outcome = _settle(settings, lease, "user_error", exc.message, exc.param)
    except Exception as exc:  # noqa: BLE001 - retried while attempts remain, then failed with code "error"
        log.exception("attempt %d of %s failed", lease.attempt, job_id)
        heartbeat.stop()
        outcome = _settle(settings, lease, "error", _describe(exc), None, retry=True)
    except BaseException:
        # Shutdown (SystemExit, KeyboardInterrupt): hand the job back rather than leave it running.
        heartbeat.stop()
        with session_scope(settings.database_url) as session:
            released = state.release(session, lease)
        if released:
            publish(RUN_JOB, job_id)
        raise
    finally:
        heartbeat.stop()
        shutil.rmtree(work, ignore_errors=True)
        _free_memory()
    if outcome == "queued":
        publish(RUN_JOB, job_id)
    return outcome


def _attempt(settings: Settings, job: JobSpec, lease: Lease, heartbeat: Heartbeat, work: Path) -> str:
    _fresh(work, job.id)
    store = ArtifactStore(settings.artifact_url)
    checkpoints = work / "checkpoints"
    # Resume from whatever a previous attempt (on any machine) left in the store.
    if store.exists(checkpoint_key(job.id)):
        store.get_folder(checkpoint_key(job.id), checkpoints)
    config = _config(settings, job)
    train_uri, val_uri = _data_uris(settings, job, work / "data")
    reporter = JobReporter(settings, lease, store, heartbeat)
    reporter.announce_resume(checkpoints)
    out = work / "adapter"
    metrics = train_to_folder(
        job.model,
        train_uri,
        out,
        config,
        val_uri=val_uri,
        registry=ModelRegistry(settings.model_dir),
        callbacks=[reporter],
        checkpoint_dir=checkpoints,
    )
    heartbeat.stop()
    if heartbeat.cancel.is_set():
        raise TrainingInterrupted("cancelled")
    return _publish_adapter(settings, job, lease, store, out, metrics)


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
        config=state.clean_json(config),
        created_at=utcnow(),
    )
    try:
        with session_scope(settings.database_url) as session:
            outcome = state.complete(session, lease, adapter, metrics, int(metrics["trainable_params"]))
    except BaseException:
        store.delete(key)
        raise
    if outcome != "succeeded":
        store.delete(key)
    return outcome or "lease_lost"


def _free_memory() -> None:
    # A worker lives for many jobs: give the allocator's cached GPU blocks back between them.
    gc.collect()
    import torch

    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()
