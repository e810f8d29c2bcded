"""Workers that die, messages that come twice, a job that kills every worker that runs it: with plain
``grft worker`` processes only (no ``--control``, no beat), the database stays the truth and every job
ends once, in the state it deserves."""

from __future__ import annotations

import time

import pytest

from domain.queue import RUN_JOB, VALIDATE_JOB, publish
from domain.settings import Settings
from tests.faults.conftest import (
    Worker,
    Workers,
    assert_outcome,
    checkpoint_step,
    get_job,
    insert_job,
    messages,
    method,
    report,
    until,
    wait_for_end,
)

pytestmark = pytest.mark.slow


def test_killed_workers_job_resumes_on_another_plain_worker(settings: Settings, workers: Workers) -> None:
    workers.start(2)
    # 12 epochs of 7 steps, a checkpoint every 4: long enough to be killed with most of it left.
    job_id = insert_job(settings, method(epochs=12))
    assert publish(settings, VALIDATE_JOB, job_id)
    until("a checkpoint at step 8", lambda: checkpoint_step(settings, job_id) >= 8)
    holder = until("the worker that runs the job", lambda: workers.holder(job_id))
    holder.kill()
    killed_at, killed = checkpoint_step(settings, job_id), time.monotonic()
    job = get_job(settings, job_id)
    assert (job.status, job.attempt) == ("running", 1), "the job ended before the kill: make it longer"
    (survivor,) = workers.alive()

    # Nobody is asked to help: the survivor's own reconciler finds the stale lease and re-queues it.
    until(
        "the second attempt",
        lambda: (j := get_job(settings, job_id)).attempt == 2 and j.status == "running",
        every=0.05,
    )
    resumed = time.monotonic() - killed
    wait_for_end(settings, job_id)
    done = time.monotonic() - killed

    assert_outcome(settings, job_id, "succeeded", attempt=2)
    assert survivor.alive()
    resumes = [m for m in messages(settings, job_id) if m.startswith("Resuming from the checkpoint at step")]
    assert len(resumes) == 1, resumes
    assert int(resumes[0].rsplit(" ", 1)[1]) >= killed_at
    report("sigkill-after-checkpoint", lease_s=settings.lease_seconds, resumed_s=resumed, succeeded_s=done)


def test_duplicate_delivery_runs_the_job_once(settings: Settings, workers: Workers) -> None:
    first, second = workers.start(2)
    job_id = insert_job(settings, method(epochs=3), status="queued")
    # The same message twice, as a broker redelivery or a second publisher would send it: both
    # workers get one, at the same moment.
    assert publish(settings, RUN_JOB, job_id)
    assert publish(settings, RUN_JOB, job_id)
    wait_for_end(settings, job_id)

    def task_results() -> list[str] | None:
        results = [
            line
            for worker in (first, second)
            for line in worker.output().splitlines()
            if f"Task {RUN_JOB}[" in line and " succeeded in " in line
        ]
        return results if len(results) == 2 else None

    results = until("both deliveries to be handled", task_results)
    assert sum("'skipped'" in line for line in results) == 1, results
    assert_outcome(settings, job_id, "succeeded", attempt=1)


def test_poison_job_fails_after_max_attempts_and_spares_the_others(
    settings: Settings, workers: Workers
) -> None:
    workers.start(2)
    poison = insert_job(settings, method(epochs=12))
    healthy = insert_job(settings, method(epochs=3))
    assert publish(settings, VALIDATE_JOB, poison)
    assert publish(settings, VALIDATE_JOB, healthy)

    # Every process that starts running the poison job dies at once (as on a segfault in a native
    # library); the supervisor (systemd, Kubernetes) starts a new worker in its place.
    kills: list[float] = []
    started = time.monotonic()

    def poison_ended() -> bool:
        victim: Worker | None = workers.holder(poison)
        if victim is not None:
            victim.kill()
            kills.append(time.monotonic() - started)
            workers.start(1, ready=False)
        return get_job(settings, poison).status in ("succeeded", "failed", "cancelled")

    until("the poison job to end", poison_ended, every=0.05)
    ended = time.monotonic() - started

    job = assert_outcome(settings, poison, "failed", attempt=settings.max_attempts)
    assert len(kills) == settings.max_attempts
    assert job.error is not None
    assert "stopped responding" in job.error["message"]
    wait_for_end(settings, healthy)
    assert_outcome(settings, healthy, "succeeded", attempt=1)
    report("poison-job", lease_s=settings.lease_seconds, failed_s=ended, kills=float(len(kills)))
