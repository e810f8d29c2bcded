"""A job's states and the moves between them, as data: ``domain.jobs.lifecycle`` applies them.

    validating_files ──files_valid──▶ queued ──claim──▶ running ──succeed──▶ succeeded
       │        │                      │  ▲                │
       │        └──fail──▶ failed      │  └────requeue─────┤──fail──▶ failed
       └──cancel──▶ cancelled ◀─cancel─┘                   └──cancel──▶ cancelling ──ack_cancel──▶ cancelled

Pausing (OpenAI's ``pause``/``resume``): a queued job is paused at once; a running one is asked to
stop (``pausing``) and stops right after its next checkpoint is stored (``ack_pause``), so no step is
lost; ``resume`` queues a paused job again, to continue from that checkpoint.

    queued ──pause──▶ paused ◀──ack_pause── pausing ◀──pause── running
                        │                    │  └──resume──▶ running (the pause had not happened yet)
                        ├──resume──▶ queued  ├──succeed / fail──▶ succeeded / failed
                        └──cancel──▶ cancelled └──cancel──▶ cancelling

The other moves are self-loops that change the lease or the clocks, not the state: claim_validation,
heartbeat, checkpoint, republish, and a repeated cancel of a cancelling job.
Every other (state, trigger) pair is refused: the table below is the whole of what may happen to a job.

This module holds no database code, so the ORM model and the API schemas can use the enum freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class JobStatus(StrEnum):
    """The ``status`` of a fine-tuning job, with OpenAI's values plus ``cancelling`` and ``pausing``."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Trigger(StrEnum):
    """What can happen to a job; each is applied by one function of ``domain.jobs.lifecycle``."""

    CLAIM_VALIDATION = "claim_validation"  # a worker takes the job to check its files
    FILES_VALID = "files_valid"  # the files passed: the job waits for a training worker
    CLAIM = "claim"  # a worker starts an attempt: attempt + 1, a new lease
    HEARTBEAT = "heartbeat"  # the lease holder is alive (progress rides along)
    CHECKPOINT = "checkpoint"  # the lease holder stored a checkpoint
    SUCCEED = "succeed"  # the attempt produced its adapter
    FAIL = "fail"  # a verdict: bad input, an internal error past the last attempt, a dead worker
    REQUEUE = "requeue"  # the attempt ended without a verdict: retry, worker shutdown, dead worker
    CANCEL = "cancel"  # the user asks
    ACK_CANCEL = "ack_cancel"  # the lease holder, or the reconciler when none is alive, honours it
    REPUBLISH = "republish"  # the reconciler resends a message that may have been lost
    PAUSE = "pause"  # the user asks
    ACK_PAUSE = (
        "ack_pause"  # the lease holder stored a checkpoint and stopped (or the reconciler, none alive)
    )
    RESUME = "resume"  # the user asks


_S, _T = JobStatus, Trigger

INITIAL = JobStatus.VALIDATING_FILES

TRANSITIONS: Mapping[tuple[JobStatus, Trigger], JobStatus] = MappingProxyType(
    {
        (_S.VALIDATING_FILES, _T.CLAIM_VALIDATION): _S.VALIDATING_FILES,
        (_S.VALIDATING_FILES, _T.HEARTBEAT): _S.VALIDATING_FILES,
        (_S.VALIDATING_FILES, _T.FILES_VALID): _S.QUEUED,
        (_S.VALIDATING_FILES, _T.FAIL): _S.FAILED,
        (_S.VALIDATING_FILES, _T.CANCEL): _S.CANCELLED,
        (_S.VALIDATING_FILES, _T.REPUBLISH): _S.VALIDATING_FILES,
        (_S.QUEUED, _T.CLAIM): _S.RUNNING,
        (_S.QUEUED, _T.CANCEL): _S.CANCELLED,
        (_S.QUEUED, _T.REPUBLISH): _S.QUEUED,
        (_S.RUNNING, _T.HEARTBEAT): _S.RUNNING,
        (_S.RUNNING, _T.CHECKPOINT): _S.RUNNING,
        (_S.RUNNING, _T.SUCCEED): _S.SUCCEEDED,
        (_S.RUNNING, _T.FAIL): _S.FAILED,
        (_S.RUNNING, _T.REQUEUE): _S.QUEUED,
        (_S.RUNNING, _T.CANCEL): _S.CANCELLING,
        # Once a cancel is asked the job ends cancelled: no success, failure or retry overtakes it.
        (_S.CANCELLING, _T.HEARTBEAT): _S.CANCELLING,
        (_S.CANCELLING, _T.CHECKPOINT): _S.CANCELLING,
        (_S.CANCELLING, _T.CANCEL): _S.CANCELLING,
        (_S.CANCELLING, _T.ACK_CANCEL): _S.CANCELLED,
        (_S.QUEUED, _T.PAUSE): _S.PAUSED,
        (_S.RUNNING, _T.PAUSE): _S.PAUSING,
        (_S.PAUSING, _T.PAUSE): _S.PAUSING,
        (_S.PAUSED, _T.PAUSE): _S.PAUSED,
        (_S.PAUSING, _T.HEARTBEAT): _S.PAUSING,
        (_S.PAUSING, _T.CHECKPOINT): _S.PAUSING,
        (_S.PAUSING, _T.ACK_PAUSE): _S.PAUSED,
        # The run ended before a checkpoint let it stop: its verdict stands.
        (_S.PAUSING, _T.SUCCEED): _S.SUCCEEDED,
        (_S.PAUSING, _T.FAIL): _S.FAILED,
        (_S.PAUSING, _T.CANCEL): _S.CANCELLING,
        (_S.PAUSING, _T.RESUME): _S.RUNNING,
        (_S.PAUSED, _T.RESUME): _S.QUEUED,
        (_S.PAUSED, _T.CANCEL): _S.CANCELLED,
    }
)

TERMINAL: tuple[JobStatus, ...] = tuple(s for s in JobStatus if not any(k[0] == s for k in TRANSITIONS))
"""States that nothing leaves: succeeded, failed, cancelled."""

UNFINISHED: tuple[JobStatus, ...] = tuple(s for s in JobStatus if s not in TERMINAL)
"""States that count against a tenant's active-job quota and keep the job's files in use."""


class TransitionRefused(ValueError):
    """The table has no move for this (state, trigger) pair."""


def next_status(status: str, trigger: Trigger) -> JobStatus:
    """The state ``trigger`` moves a job in ``status`` to.

    Raises:
        TransitionRefused: the move is not in ``TRANSITIONS``.
    """
    target = TRANSITIONS.get((JobStatus(status), trigger))
    if target is None:
        raise TransitionRefused(f"a {status} job cannot {trigger}")
    return target


def sources(trigger: Trigger) -> tuple[JobStatus, ...]:
    """Every state ``trigger`` may be applied in, in the enum's order."""
    return tuple(s for s in JobStatus if (s, trigger) in TRANSITIONS)
