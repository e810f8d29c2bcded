"""The worker's Prometheus metrics and log context, served on ``GRFT_WORKER_METRICS_PORT``.

What it counts: training steps (time between steps, samples per second), the tasks it ran, the jobs
it finished (by state; failures by error code; time from creation and from start), and, read at
scrape time, its memory (resident set, and CUDA memory once this process has initialised CUDA).

Why a plain in-process registry is right: a grft worker is one Celery process with the ``solo`` pool
(``grft worker`` always starts it so, one process per GPU), so tasks run in the very process that
serves the metrics. Under a prefork pool the tasks would run in children whose counters this server
never sees; that would need ``prometheus_client``'s multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``),
which grft does not use because it never forks training processes.

Log context: each task binds its job id (``domain.logging``) for every line it writes, and with
``GRFT_LOG_FORMAT=json`` the handlers Celery installs write JSON lines.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import Token
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from domain import logging as log_context
from domain.db import session_scope
from domain.jobs.models import Job
from domain.jobs.states import JobStatus
from domain.queue import RUN_JOB, VALIDATE_JOB
from domain.settings import Settings, get_settings

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
_JOB_TASKS = (VALIDATE_JOB, RUN_JOB)


class CudaCollector(Collector):
    """CUDA memory per device, once this process has initialised CUDA (never initialises it itself:
    the parent of a GPU process must not, and a scrape must not cost a CUDA context)."""

    def collect(self) -> Iterator[Any]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        allocated = GaugeMetricFamily(
            "grft_worker_cuda_memory_allocated_bytes", "CUDA memory held by tensors.", labels=["device"]
        )
        reserved = GaugeMetricFamily(
            "grft_worker_cuda_memory_reserved_bytes",
            "CUDA memory reserved by the caching allocator.",
            labels=["device"],
        )
        peak = GaugeMetricFamily(
            "grft_worker_cuda_memory_peak_bytes", "Peak CUDA memory held by tensors.", labels=["device"]
        )
        for index in range(torch.cuda.device_count()):
            allocated.add_metric([str(index)], torch.cuda.memory_allocated(index))
            reserved.add_metric([str(index)], torch.cuda.memory_reserved(index))
            peak.add_metric([str(index)], torch.cuda.max_memory_allocated(index))
        yield from (allocated, reserved, peak)


class WorkerMetrics:
    """The series of one worker process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps = Counter("grft_worker_steps", "Optimizer steps trained.", registry=r)
        self.step_seconds = Histogram(
            "grft_worker_step_seconds",
            "Wall time between consecutive optimizer steps of a run.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.samples_per_second = Gauge(
            "grft_worker_samples_per_second", "Training samples per second at the last step.", registry=r
        )
        self.last_step_time = Gauge(
            "grft_worker_last_step_timestamp_seconds", "Unix time of the last optimizer step.", registry=r
        )
        self.busy = Gauge("grft_worker_busy", "1 while a task runs.", registry=r)
        self.tasks = Counter(
            "grft_worker_tasks", "Tasks run, by task and outcome.", ["task", "outcome"], registry=r
        )
        self.jobs_finished = Counter(
            "grft_jobs_finished", "Jobs this worker ended, by final state.", ["status"], registry=r
        )
        self.job_failures = Counter("grft_job_failures", "Failed jobs by error code.", ["code"], registry=r)
        self.job_seconds = Histogram(
            "grft_job_duration_seconds",
            "From creation to the end, by final state.",
            ["status"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.job_run_seconds = Histogram(
            "grft_job_run_seconds",
            "From the first start of training to the end, by final state.",
            ["status"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open files
        r.register(CudaCollector())
        self._last_step: float | None = None

    def start_run(self) -> None:
        """A new attempt begins: the next step's time is not measured from the previous run."""
        self._last_step = None

    def record_step(self, samples_per_s: float) -> None:
        """One optimizer step has finished (called from the job's progress callback)."""
        now = time.monotonic()
        if self._last_step is not None:
            self.step_seconds.observe(now - self._last_step)
        self._last_step = now
        self.steps.inc()
        self.samples_per_second.set(samples_per_s)
        self.last_step_time.set(time.time())

    def record_job_end(self, database_url: str, job_id: str) -> None:
        """Count ``job_id`` if it has ended, read from its row (the database is the truth)."""
        with session_scope(database_url) as session:
            job = session.get(Job, job_id)
            if job is None or job.status not in FINISHED:
                return
            status, error = str(job.status), job.error or {}
            created, started, finished = job.created_at, job.started_at, job.finished_at
        self.jobs_finished.labels(status).inc()
        if status == JobStatus.FAILED:
            self.job_failures.labels(str(error.get("code") or "error")).inc()
        if finished is not None:
            self.job_seconds.labels(status).observe(max(0.0, (finished - created).total_seconds()))
            if started is not None:
                self.job_run_seconds.labels(status).observe(max(0.0, (finished - started).total_seconds()))


METRICS = WorkerMetrics()
# Where the signal handlers find the process's settings (the tasks' own source; tests replace both).
settings_source: Callable[[], Settings] = get_settings


def start_server(settings: Settings) -> Any:
    """Serve the metrics on ``settings.worker_metrics_port`` (all interfaces); None when it is 0."""
    if not settings.worker_metrics_port:
        return None
    try:
        server, _thread = _start_http_server(settings.worker_metrics_port, registry=METRICS.registry)
    except OSError:  # the port is taken: the worker still works, only unobserved
        log.error("cannot serve worker metrics on port %d", settings.worker_metrics_port, exc_info=True)
        return None
    log.info("worker metrics on port %d", settings.worker_metrics_port)
    return server


# --- Celery signals ---------------------------------------------------------------------------------

_bound: dict[str, tuple[Token[log_context.LogContext | None], float]] = {}
_bound_lock = threading.Lock()


def _task_started(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    job_id = args[0] if task is not None and task.name in _JOB_TASKS and args else None
    token = log_context.attach(job_id=str(job_id) if job_id is not None else None)
    with _bound_lock:
        _bound[str(task_id)] = (token, time.monotonic())
    METRICS.busy.set(1)
    if task is not None and task.name == RUN_JOB:
        METRICS.start_run()
    log.info("task %s started", getattr(task, "name", "?"), extra={"task_id": task_id})


def _task_ended(
    task_id: str | None = None, task: Any = None, args: Any = None, retval: Any = None, **_: Any
) -> None:
    METRICS.busy.set(0)
    name = getattr(task, "name", "unknown")
    with _bound_lock:
        started = _bound.get(str(task_id), (None, time.monotonic()))[1]
    log.info(
        "task %s ended: %s",
        name,
        retval,
        extra={
            "task_id": task_id,
            "outcome": str(retval),
            "duration_s": round(time.monotonic() - started, 3),
        },
    )
    METRICS.tasks.labels(name, str(retval) if retval in {*FINISHED, JobStatus.QUEUED} else "other").inc()
    try:
        if name in _JOB_TASKS and args and retval in FINISHED:
            METRICS.record_job_end(settings_source().database_url, str(args[0]))
    except Exception:  # noqa: BLE001 - a metric is never worth failing a task over
        log.warning("could not record the end of %s", args[0] if args else "?", exc_info=True)
    finally:
        with _bound_lock:
            bound = _bound.pop(str(task_id), None)
        if bound is not None:
            log_context.detach(bound[0])


def _json_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None and settings_source().log_format == "json":
        log_context.use_json(list(logger.handlers))


def connect() -> None:
    """Wire the metrics and the log context into this process's Celery signals."""
    task_prerun.connect(_task_started, weak=False)
    task_postrun.connect(_task_ended, weak=False)
    after_setup_logger.connect(_json_logs, weak=False)
    after_setup_task_logger.connect(_json_logs, weak=False)
