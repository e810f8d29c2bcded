"""Celery configuration shared by the publishers (API, reconciler) and the worker.

The API sends tasks by name and never imports ``worker``; both sides build their Celery app from
``celery_config(settings)`` so that they agree on the broker, its transport options, the queues and
the serializer. The database is the source of truth: a message only says "job X is ready", so a
publish that fails is logged and left to the reconciler, never raised into a request.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery

from domain.settings import Settings

log = logging.getLogger(__name__)

VALIDATE_JOB = "grft.validate_job"
RUN_JOB = "grft.run_job"
RECONCILE = "grft.reconcile"

# Longer than any training run: Redis re-delivers an unacknowledged message after this long. A
# re-delivery is harmless (the claim is a compare-and-set), so the bound only has to avoid churn.
VISIBILITY_TIMEOUT_S = 24 * 3600


def control_queue(settings: Settings) -> str:
    """The queue of ``grft.reconcile``: GPU workers are busy for hours, so it must not wait behind jobs."""
    return f"{settings.queue}.control"


def broker_folders(settings: Settings) -> dict[str, Path]:
    """The filesystem transport's folders (embedded mode), under ``settings.broker_folder``."""
    root = settings.broker_folder
    return {"messages": root / "out", "processed": root / "processed", "control": root / "control"}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for ``settings``; creates the broker folders in embedded mode."""
    transport: dict[str, Any]
    if settings.embedded:
        folders = broker_folders(settings)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        # One folder both ways: publishers write where the worker reads. Processed messages are kept
        # on the same filesystem (a rename, never a copy of a file still being written) and pruned.
        transport = {
            "data_folder_in": str(folders["messages"]),
            "data_folder_out": str(folders["messages"]),
            "processed_folder": str(folders["processed"]),
            "store_processed": True,
            "control_folder": str(folders["control"]),
        }
    else:
        transport = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return {
        # An explicit host keeps kombu from logging "no hostname supplied" on every connection.
        "broker_url": "filesystem://localhost//"
        if settings.broker_url == "filesystem://"
        else settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": settings.queue,
        "task_create_missing_queues": True,
        "task_routes": {
            RECONCILE: {"queue": control_queue(settings)},
            "grft.*": {"queue": settings.queue},
        },
        # A broker that is down must not hold an API request for long: the reconciler republishes.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "beat_schedule": {
            "grft-reconcile": {
                "task": RECONCILE,
                "schedule": settings.reconcile_seconds,
                # A pass that waited longer than a period is superseded by the next one.
                "options": {"expires": settings.reconcile_seconds},
            },
        },
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
    }


_clients: dict[tuple[str, str, str, float], Celery] = {}
_clients_lock = threading.Lock()


def celery_client(settings: Settings) -> Celery:
    """A publishing-only Celery app for ``settings`` (one per broker and queue, reused)."""
    key = (settings.broker_url, str(settings.broker_folder), settings.queue, settings.reconcile_seconds)
    with _clients_lock:
        app = _clients.get(key)
        if app is None:
            app = Celery("grft-client", set_as_current=False)
            app.conf.update(celery_config(settings))
            _clients[key] = app
    return app


def publish(settings: Settings, task_name: str, job_id: str) -> bool:
    """Send ``task_name(job_id)``; returns False (and logs) when the broker refused it.

    Call it after the transaction that made the job ready has committed.
    """
    try:
        celery_client(settings).send_task(task_name, args=[job_id])
    except Exception:  # noqa: BLE001 - any broker failure: the reconciler republishes from the database
        log.warning("could not publish %s(%s); the reconciler will retry", task_name, job_id, exc_info=True)
        return False
    return True


def prune_processed(settings: Settings, older_than_s: float = 3600.0) -> int:
    """Delete processed filesystem-broker messages older than ``older_than_s``; returns how many."""
    folder = broker_folders(settings)["processed"]
    if not folder.is_dir():
        return 0
    cutoff, removed = time.time() - older_than_s, 0
    for path in folder.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
