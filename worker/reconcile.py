"""The reconciler's process side: the database is the truth, so lost messages and dead workers are
repaired from it by ``domain.jobs.lifecycle.reconcile``, and this module publishes what became due.

Every worker process runs it on a thread (``worker.celery_app``): once at start, then every
``reconcile_seconds``, so a dead worker's job resumes on whichever workers are running and no special
process is needed. Passes take a database advisory lock without waiting: while one worker repairs,
the others skip that round. (Several passes side by side would still be safe, each repair being one
conditional UPDATE; the lock only spares the database the duplicate work.) ``grft.reconcile``, sent by
the optional beat of ``grft worker --control``, runs the same pass.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from domain.db import session_scope, try_advisory_xact_lock
from domain.gc import Collected, collect_garbage
from domain.jobs import lifecycle
from domain.jobs.lifecycle import Publish
from domain.queue import prune_processed
from domain.settings import Settings
from worker import webhooks

log = logging.getLogger(__name__)

# The names of the advisory locks one reconciler pass and one garbage collection hold (per database).
LOCK = "grft.reconcile"
GC_LOCK = "grft.gc"


def reconcile(settings: Settings, publish: Publish) -> list[tuple[str, str]]:
    """One reconciler pass: repair in one commit under the lock, then publish what became due.
    Returns the tasks sent (none when another process holds the lock)."""
    with session_scope(settings.database_url) as session:
        if not try_advisory_xact_lock(session, LOCK):
            return []
        due = lifecycle.reconcile(
            session, lease_seconds=settings.lease_seconds, republish_after_s=settings.republish_seconds
        )
        due += webhooks.due(session, settings)  # webhook deliveries whose message may be lost
    for task_name, job_id in due:
        publish(task_name, job_id)
    if settings.embedded:
        prune_processed(settings)
    if due:
        log.info("reconciler republished %s", ", ".join(f"{name}({job})" for name, job in due))
    return due


def collect(settings: Settings) -> Collected | None:
    """One garbage collection under its advisory lock; None when another process is collecting."""
    with session_scope(settings.database_url) as session:
        if not try_advisory_xact_lock(session, GC_LOCK):
            return None
        # The lock lives as long as this transaction: collect while holding it.
        collected = collect_garbage(settings)
    if collected.job_folders or collected.temp_entries or collected.checkpoint_rows:
        log.info(
            "garbage collected: %d checkpoint rows, %d job folders, %d temp entries",
            collected.checkpoint_rows,
            len(collected.job_folders),
            len(collected.temp_entries),
        )
    return collected


def reconcile_forever(settings: Settings, publish: Publish, stop: threading.Event) -> None:
    """Run ``reconcile`` now and then every ``reconcile_seconds``, and ``collect`` every ``gc_seconds``,
    until ``stop`` is set."""
    # The first collection falls somewhere in the first period, not at start-up: workers that start
    # together (a deploy) would otherwise each scan the artifact store at once, and a restart loop would
    # scan it on every start.
    next_gc = time.monotonic() + settings.gc_seconds * random.random()  # noqa: S311 - not security
    while True:
        try:
            reconcile(settings, publish)
        except Exception:  # noqa: BLE001 - the database may be restarting: try again next round
            log.warning("reconcile pass failed", exc_info=True)
        if time.monotonic() >= next_gc:
            next_gc = time.monotonic() + settings.gc_seconds
            try:
                collect(settings)
            except Exception:  # noqa: BLE001 - the store or the database may be away: next round
                log.warning("garbage collection failed", exc_info=True)
        # Workers started together drift apart, so that their passes do not all meet at the lock.
        if stop.wait(settings.reconcile_seconds * random.uniform(0.9, 1.1)):  # noqa: S311 - not security
            return
