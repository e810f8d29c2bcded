"""A cancel is honoured in every phase of a job, not only once training starts: while the data is read,
during the selection pass, and while the files are validated. Real jobs, real database, tiny-bert.

The cancel is asked the way ``POST …/cancel`` asks it (``lifecycle.cancel``), from inside the phase under
test, by a hook around the worker's own check (``worker.progress.CancelCheck``).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import pytest

from domain.db import session_scope
from domain.jobs import lifecycle
from domain.settings import Settings
from tests.conftest import stack_names
from tests.worker.conftest import METHOD, MakeJob, Sent, get_job, write_csv
from tests.worker.test_runner import job_events
from worker import progress, runner, tasks


class CancelIn:
    """Cancels the job (as the API does) the first time the worker's check is asked inside ``phase``;
    records how many checks and how long it took until the check said stop, and where that was."""

    def __init__(
        self, settings: Settings, tenant: str, phase: str, *, poll_now: bool = True, after: int = 1
    ) -> None:
        self.settings, self.tenant, self.phase = settings, tenant, phase
        self.after, self.seen = after, 0  # cancel at the ``after``-th check inside the phase
        # True: the check asked right after the request goes to the database (the rate limit is
        # tested on its own); False: the worker's real poll interval, for the latency figure.
        self.poll_now = poll_now
        self.cancelled_at: float | None = None
        self.noticed_at: float | None = None
        self.checks_after = 0
        self.stopped_in: set[str] = set()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        hook = self

        class Check(progress.CancelCheck):
            def __call__(self) -> bool:
                if hook.cancelled_at is None and hook.phase in stack_names():
                    hook.seen += 1
                if hook.cancelled_at is None and hook.seen >= hook.after:
                    with session_scope(hook.settings.database_url) as session:
                        lifecycle.cancel(session, hook.tenant, self.lease.job_id)
                    hook.cancelled_at = time.monotonic()
                    if hook.poll_now:
                        self.next_poll = -math.inf
                elif hook.cancelled_at is not None:
                    hook.checks_after += 1
                stop = super().__call__()
                if stop and hook.noticed_at is None:
                    hook.noticed_at = time.monotonic()
                    hook.stopped_in = stack_names()
                return stop

        monkeypatch.setattr(runner, "CancelCheck", Check)

    @property
    def latency(self) -> float:
        assert self.cancelled_at is not None
        assert self.noticed_at is not None
        return self.noticed_at - self.cancelled_at


def _report(name: str, value: float) -> None:
    sys.stderr.write(f"\n[cancel latency] {name}: {value:.3f} s\n")


class TestCancelWhileRunning:
    @pytest.mark.parametrize(
        ("phase", "rows"),
        [
            ("_csv_rows", 3000),  # reading the training file, record by record
            ("_to_labeled", 3000),  # turning records into examples
            ("compute_selection", 200),  # the selection pass, batch by batch
        ],
    )
    def test_honoured_at_the_next_check(
        self,
        settings: Settings,
        tenant: str,
        make_job: MakeJob,
        sent: Sent,
        monkeypatch: pytest.MonkeyPatch,
        phase: str,
        rows: int,
    ) -> None:
        data = write_csv(settings.dataset_roots[0] / "big.csv", rows=rows)
        method = {**METHOD, "selection_samples": rows, "selection_batch_size": 8}
        job_id = make_job(data.as_uri(), status="queued", method=method)
        hook = CancelIn(settings, tenant, phase)
        hook.install(monkeypatch)

        assert tasks.run_job(job_id) == "cancelled"

        job = get_job(settings, job_id)
        assert (job.status, job.adapter_id) == ("cancelled", None)
        assert hook.checks_after == 0  # the very check that followed the request stopped the job
        assert phase in hook.stopped_in  # ... inside the phase it was asked in
        events = job_events(settings, job_id)
        assert events[-1].message == "The job was cancelled"
        # Event types are OpenAI's: a selection or checkpoint is a message of that data kind.
        kinds = {(e.data or {}).get("kind", e.type) for e in events}
        assert not kinds & {"selection", "metrics", "checkpoint"}
        assert sent == []
        assert list((settings.home / "work").glob(f"{job_id}*")) == []
        _report(f"{phase}, cancel → stop (next poll)", hook.latency)

    def test_latency_of_a_cancel_in_the_selection_pass(
        self, settings: Settings, tenant: str, make_job: MakeJob, sent: Sent, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the worker's real poll interval (the database at most once per CANCEL_POLL_S)."""
        data = write_csv(settings.dataset_roots[0] / "big.csv", rows=1000)
        # 125 batches: several seconds of selection on one core, longer than one poll interval.
        method = {**METHOD, "selection_samples": 1000, "selection_batch_size": 8}
        job_id = make_job(data.as_uri(), status="queued", method=method)
        # Asked some way into the pass, so the request lands anywhere within a poll interval.
        hook = CancelIn(settings, tenant, "compute_selection", poll_now=False, after=40)
        hook.install(monkeypatch)

        assert tasks.run_job(job_id) == "cancelled"
        ended = time.monotonic()

        assert get_job(settings, job_id).status == "cancelled"
        assert "compute_selection" in hook.stopped_in
        assert hook.cancelled_at is not None
        # Within a poll interval plus one batch; the bound is generous for a machine shared by many.
        assert hook.latency < progress.CANCEL_POLL_S + 10.0
        _report("selection pass, cancel → stop", hook.latency)
        _report("selection pass, cancel → job cancelled", ended - hook.cancelled_at)


class TestCancelWhileValidating:
    def test_a_cancel_stops_the_validation(
        self,
        settings: Settings,
        tenant: str,
        make_job: MakeJob,
        sent: Sent,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        data = write_csv(settings.dataset_roots[0] / "big.csv", rows=3000)
        job_id = make_job(data.as_uri())
        hook = CancelIn(settings, tenant, "_csv_rows")
        hook.install(monkeypatch)

        assert tasks.validate_job(job_id) == "cancelled"

        job = get_job(settings, job_id)
        assert (job.status, job.error) == ("cancelled", None)
        assert hook.checks_after == 0
        assert "_csv_rows" in hook.stopped_in
        messages = [e.message for e in job_events(settings, job_id)]
        assert not [m for m in messages if m.startswith("Files validated")]
        assert sent == []  # never queued for training
        _report("validation, cancel → stop (next poll)", hook.latency)


def test_the_check_asks_the_database_at_most_once_per_interval(
    settings: Settings, make_job: MakeJob, dataset: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked per record, it stays cheap: thousands of calls, a handful of database round trips."""
    monkeypatch.setattr(progress, "CANCEL_POLL_S", 3600.0)
    job_id = make_job(dataset.as_uri(), status="queued")
    with session_scope(settings.database_url) as session:
        lease = lifecycle.claim(session, job_id)
    assert lease is not None
    heartbeat = runner.Heartbeat(settings, lease)  # not started: only its flags are used
    check = progress.CancelCheck(settings, lease, heartbeat)
    assert not any(check() for _ in range(10_000))
    assert (check.calls, check.polls) == (10_000, 1)

    with session_scope(settings.database_url) as session:
        lifecycle.cancel(session, get_job(settings, job_id).tenant_id, job_id)
    assert not check()  # within the interval the database is not asked again
    monkeypatch.setattr(check, "next_poll", 0.0)
    assert check()  # the next poll sees the request
    assert heartbeat.cancel.is_set()
    assert check.polls == 2
