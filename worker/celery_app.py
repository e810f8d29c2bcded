"""The Celery app of the worker, configured from ``GRFT_*`` settings (``celery -A worker.celery_app``).

Importing it touches neither torch nor CUDA: each task initialises the accelerator in the process
that runs it (one ``-P solo`` worker process per GPU).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from domain.queue import celery_config, publish
from domain.settings import get_settings

log = logging.getLogger(__name__)

app = Celery("grft", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()))

_stop_reconciler = threading.Event()


def publish_task(task_name: str, job_id: str) -> None:
    """Send a task by name with this process's settings (failures are logged; the reconciler retries)."""
    publish(get_settings(), task_name, job_id)


def _start_embedded_reconciler(**_: Any) -> None:
    # Embedded mode has no beat process: the one worker that ``grft serve`` starts also reconciles,
    # on a thread, so that lost messages and a previous run's stranded jobs are repaired.
    settings = get_settings()
    if not settings.embedded:
        return
    from worker.reconcile import reconcile_forever

    threading.Thread(
        target=reconcile_forever,
        args=(settings, publish_task, _stop_reconciler),
        name="grft-reconciler",
        daemon=True,
    ).start()
    log.info("embedded reconciler started (every %.0f s)", settings.reconcile_seconds)


def _stop_embedded_reconciler(**_: Any) -> None:
    _stop_reconciler.set()


worker_ready.connect(_start_embedded_reconciler, weak=False)
worker_shutdown.connect(_stop_embedded_reconciler, weak=False)
