"""Garbage collection of the artifact store: what finished jobs and dead processes leave behind.

``collect_garbage(settings, now)`` removes
- the checkpoints (rows, then files) of jobs that finished (succeeded, failed or cancelled) more than
  ``checkpoint_retention_hours`` ago: a finished job never resumes, so they only serve inspection for a
  while. The adapter of a succeeded job lives under ``adapters/`` and is kept;
- the folders under ``jobs/`` whose job was deleted (a failure between a DELETE's rows and files);
- the staging entries under ``tmp/`` (partial uploads, half-copied folders) not written to for
  ``temp_ttl_hours``: the process writing them died.

It is idempotent and safe to run from several workers at once (every delete tolerates a row or file that
another run removed first); workers call it periodically under a database advisory lock so that, in
practice, one runs at a time. The artifact store must belong to this database alone: a ``jobs/<id>``
folder that the database does not know is taken for a deleted job's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from domain.artifacts import JOBS, TMP, ArtifactStore, job_key
from domain.db import session_scope, utcnow
from domain.jobs import repository
from domain.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Collected:
    """What one ``collect_garbage`` run removed (store keys), and what it could not."""

    checkpoint_rows: int = 0
    job_folders: list[str] = field(default_factory=list)
    temp_entries: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def collect_garbage(settings: Settings, now: datetime | None = None) -> Collected:
    """Remove expired checkpoints, deleted jobs' folders and stale temp files (see the module doc).

    Args:
        settings: the database, the artifact store and the two ages (``checkpoint_retention_hours``,
            ``temp_ttl_hours``).
        now: the clock (UTC-aware; default: now).

    Returns:
        What was removed. A file that cannot be removed is logged, listed in ``failed`` and retried by
        the next run; database errors propagate.
    """
    now = now or utcnow()
    store = ArtifactStore(settings.artifact_url)
    collected = Collected()
    cutoff = now - timedelta(hours=settings.checkpoint_retention_hours)

    # Rows first, committed, then files: a crash in between leaves folders no row points to, which the
    # sweep below removes on the next run (the other order would leave rows pointing at nothing).
    with session_scope(settings.database_url) as session:
        collected.checkpoint_rows = repository.delete_checkpoints_finished_before(session, cutoff)

    # List the store, then ask the database: a job's folder is created only after its row (and its
    # claim) are committed, so every folder listed here has its row visible to the query.
    listed = store.children(JOBS)
    if listed:
        with session_scope(settings.database_url) as session:
            expired = repository.collectable(session, listed, cutoff)
        for job_id in expired:
            _remove(store, job_key(job_id), collected.job_folders, collected.failed)

    stale = now - timedelta(hours=settings.temp_ttl_hours)
    for name in store.children(TMP):
        key = f"{TMP}/{name}"
        modified = store.modified(key)
        if modified is not None and modified < stale:
            _remove(store, key, collected.temp_entries, collected.failed)

    if collected.checkpoint_rows or collected.job_folders or collected.temp_entries:
        log.info(
            "garbage collection: %d checkpoint rows, %d job folders, %d temp entries removed",
            collected.checkpoint_rows,
            len(collected.job_folders),
            len(collected.temp_entries),
        )
    return collected


def _remove(store: ArtifactStore, key: str, removed: list[str], failed: list[str]) -> None:
    try:
        store.delete(key)
    except OSError as exc:
        log.warning("garbage collection could not remove %s: %s", store.uri(key), exc)
        failed.append(key)
        return
    removed.append(key)
