"""The broker and the database go away under running workers: Redis is killed and comes back empty
(the messages it held are lost), the database refuses connections and drops the open ones for a few
seconds. Jobs still end once, and a brief database cut costs no attempt."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from domain.queue import VALIDATE_JOB, publish
from domain.settings import Settings
from tests.faults.conftest import (
    RedisServer,
    Workers,
    assert_outcome,
    checkpoint_step,
    insert_job,
    method,
    report,
    until,
    wait_for_end,
)
from tests.postgres import PG_ADMIN

pytestmark = pytest.mark.slow


def test_redis_restarted_empty(settings: Settings, workers: Workers, redis_server: RedisServer) -> None:
    (worker,) = workers.start(1)
    running = insert_job(settings, method(epochs=12))
    assert publish(settings, VALIDATE_JOB, running)
    until("the first job to train", lambda: checkpoint_step(settings, running) >= 4)
    # The worker is busy (one job at a time, prefetch 1): this message waits in Redis (and so may
    # the reconciler's copies of it, sent every republish_seconds while the job waits).
    waiting = insert_job(settings, method(epochs=3))
    assert publish(settings, VALIDATE_JOB, waiting)
    client = redis_server.client()
    try:
        assert client.llen(settings.queue) >= 1
    finally:
        client.close()

    redis_server.kill()
    redis_server.start()  # the same port, nothing in it: the waiting job's message is gone
    restarted = time.monotonic()
    client = redis_server.client()
    try:
        assert client.dbsize() == 0
    finally:
        client.close()

    wait_for_end(settings, running)
    wait_for_end(settings, waiting)
    done = time.monotonic() - restarted
    assert worker.alive()
    assert_outcome(settings, running, "succeeded", attempt=1)
    assert_outcome(settings, waiting, "succeeded", attempt=1)
    report("redis-restarted-empty", republish_s=settings.republish_seconds, both_succeeded_s=done)


def test_database_cut_mid_job_costs_no_attempt(settings: Settings, workers: Workers) -> None:
    # A lease longer than the cut: recovery here is the worker's own, not the reconciler's.
    settings = settings.model_copy(update={"lease_seconds": 20.0})
    workers.settings = settings
    (worker,) = workers.start(1)
    job_id = insert_job(settings, method(epochs=12))
    assert publish(settings, VALIDATE_JOB, job_id)
    until("a checkpoint at step 4", lambda: checkpoint_step(settings, job_id) >= 4)

    name = make_url(settings.database_url).database
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    terminated = 0
    cut_s = 5.0
    try:
        with admin.connect() as conn:
            # Only this test's database: no new connections, and the open ones dropped mid-whatever.
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            try:
                cut = time.monotonic()
                while time.monotonic() - cut < cut_s:
                    terminated += len(
                        conn.execute(
                            text(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = :name AND pid <> pg_backend_pid()"
                            ),
                            {"name": name},
                        ).all()
                    )
                    time.sleep(0.2)
            finally:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        restored = time.monotonic()
    finally:
        admin.dispose()
    assert terminated >= 1

    job = wait_for_end(settings, job_id)
    done = time.monotonic() - restored
    assert worker.alive()
    assert job.status == "succeeded", job.error
    assert "the database is out of reach" in worker.output()  # the cut reached the running job
    assert_outcome(settings, job_id, "succeeded", attempt=1)
    report("database-cut", cut_s=cut_s, succeeded_after_cut_s=done, connections_terminated=float(terminated))
