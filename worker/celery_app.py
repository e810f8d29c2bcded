"""The Celery app of the worker, configured from ``GRFT_*`` settings (``celery -A worker.celery_app``).

Importing it touches neither torch nor CUDA: each task initialises the accelerator in the process
that runs it (one ``-P solo`` worker process per GPU).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown

from domain.queue import celery_config, publish
from domain.settings import get_settings
from worker import housekeeping
from worker import metrics as worker_metrics

log = logging.getLogger(__name__)
# A worker started by ``grft serve`` follows its parent from the first moment it can, long before the
# worker's start-up (importing torch) is over: if ``serve`` dies meanwhile, the worker goes too.
housekeeping.watch_parent()

app = Celery("grft", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()))

_stop_reconciler = threading.Event()
# Task metrics and the job id in every log line of a task; JSON log lines with GRFT_LOG_FORMAT=json.
worker_metrics.connect()


def publish_task(task_name: str, job_id: str) -> None:
    """Send a task by name with this process's settings (failures are logged; the reconciler retries)."""
    publish(get_settings(), task_name, job_id)


def _prepare_process(**_: Any) -> None:
    # Before the consumer and beat start: create GRFT_HOME, work and this process's temp folder (beat
    # writes its schedule under GRFT_HOME) and sweep what dead workers left.
    housekeeping.prepare(get_settings())


def _start_reconciler(**_: Any) -> None:
    # Every worker reconciles, on a thread of its own: a job that trains for hours holds the task
    # loop, so a pass queued as a task could wait behind it. In the distributed mode the passes take an
    # advisory lock (worker.reconcile), so recovery needs no special process; in the embedded mode the
    # one worker that ``grft serve`` starts repairs what lost messages and a previous run left.
    settings = get_settings()
    from worker.reconcile import reconcile_forever

    threading.Thread(
        target=reconcile_forever,
        args=(settings, publish_task, _stop_reconciler),
        name="grft-reconciler",
        daemon=True,
    ).start()
    log.info("reconciler started (every %.0f s)", settings.reconcile_seconds)


def _start_metrics_server(**_: Any) -> None:
    # In the worker's own process (the solo pool runs tasks here too): see worker.metrics.
    worker_metrics.start_server(get_settings())


def _stop_reconciler_thread(**_: Any) -> None:
    _stop_reconciler.set()


def _remove_process_temp(**_: Any) -> None:
    housekeeping.remove_process_temp()


worker_init.connect(_prepare_process, weak=False)
worker_init.connect(_start_metrics_server, weak=False)
worker_ready.connect(_start_reconciler, weak=False)
worker_shutdown.connect(_stop_reconciler_thread, weak=False)
worker_shutdown.connect(_remove_process_temp, weak=False)
