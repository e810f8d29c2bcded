"""The SDK's job statuses are the service's: grft_client may not import domain (an import contract), so
it states them itself, and this test keeps the two lists the same."""

from __future__ import annotations

from domain.jobs.states import TERMINAL, JobStatus
from grft_client import JOB_STATUSES, TERMINAL_STATUSES


def test_sdk_knows_every_status_of_the_service() -> None:
    assert sorted(JOB_STATUSES) == sorted(s.value for s in JobStatus)
    assert len(JOB_STATUSES) == len(set(JOB_STATUSES))


def test_sdk_final_statuses_are_the_terminal_states() -> None:
    assert TERMINAL_STATUSES == {s.value for s in TERMINAL}
