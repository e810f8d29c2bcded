"""A worker's metrics endpoint, after a real tiny job: steps, throughput, memory, the task and the
job's end; and the job id on the task's log lines."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from domain.logging import json_handler
from domain.settings import Settings
from tests.worker.conftest import MakeJob, Sent, upload
from worker import metrics as worker_metrics
from worker import tasks


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def endpoint(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The worker's metrics server on a free port, with the test's settings behind the signals."""
    settings.worker_metrics_port = free_port()
    monkeypatch.setattr(worker_metrics, "settings_source", lambda: settings)
    server = worker_metrics.start_server(settings)
    assert server is not None
    yield f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    server.shutdown()
    server.server_close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def get(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def test_a_tiny_job_shows_on_the_worker_endpoint(
    settings: Settings,
    make_job: MakeJob,
    tenant: str,
    dataset: Any,
    sent: Sent,
    endpoint: str,
    log_lines: io.StringIO,
) -> None:
    before = scrape(endpoint)
    job_id = make_job(upload(settings, tenant, dataset))

    # Through Celery's tracer (eager), so the task signals fire as they do in a worker.
    assert tasks.validate_job.apply(args=[job_id]).get() == "queued"
    assert tasks.run_job.apply(args=[job_id]).get() == "succeeded"

    logging.getLogger("tests.observability").info("after the tasks")
    after = scrape(endpoint)
    steps = get(after, "grft_worker_steps_total") - get(before, "grft_worker_steps_total")
    assert steps == 12  # 48 rows, 2 epochs, batches of 8 minus the validation split: see METHOD
    timed = get(after, "grft_worker_step_seconds_count") - get(before, "grft_worker_step_seconds_count")
    assert timed == steps - 1  # each step timed from the one before it, within the run
    assert get(after, "grft_worker_samples_per_second") > 0
    assert get(after, "grft_worker_last_step_timestamp_seconds") > 0
    assert get(after, "process_resident_memory_bytes") > 0
    assert get(after, "grft_worker_busy") == 0
    finished = {"status": "succeeded"}
    assert (
        get(after, "grft_jobs_finished_total", **finished)
        - get(before, "grft_jobs_finished_total", **finished)
        == 1
    )
    ran = get(after, "grft_job_run_seconds_count", status="succeeded") - get(
        before, "grft_job_run_seconds_count", status="succeeded"
    )
    assert ran == 1
    task = {"task": "grft.run_job", "outcome": "succeeded"}
    assert get(after, "grft_worker_tasks_total", **task) - get(before, "grft_worker_tasks_total", **task) == 1

    entries = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    ends = [
        e
        for e in entries
        if e["logger"] == "worker.metrics" and e["message"].startswith("task grft.run_job ended")
    ]
    assert len(ends) == 1
    assert ends[0]["job_id"] == job_id
    assert ends[0]["outcome"] == "succeeded"
    starts = [e for e in entries if e["message"] == "task grft.validate_job started"]
    assert [e["job_id"] for e in starts] == [job_id]
    later = [e for e in entries if e["message"] == "after the tasks"]
    assert [e["job_id"] for e in later] == [None]  # the task's context ends with the task


def test_a_failed_job_counts_its_error_code(
    settings: Settings, make_job: MakeJob, sent: Sent, endpoint: str
) -> None:
    before = scrape(endpoint)
    job_id = make_job("file-does-not-exist")
    assert tasks.validate_job.apply(args=[job_id]).get() == "failed"
    after = scrape(endpoint)
    failures = {
        dict(labels)["code"]: v - get(before, name, **dict(labels))
        for (name, labels), v in after.items()
        if name == "grft_job_failures_total"
    }
    assert sum(failures.values()) == 1
    assert [code for code, n in failures.items() if n == 1][0] != ""
