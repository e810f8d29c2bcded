"""Operational reads taken when Prometheus scrapes: jobs per state and the broker's queue depths.

Both are cheap and bounded: one grouped count over the indexed ``status`` column under a statement
timeout, and one ``LLEN`` per queue key on Redis (a directory listing for the embedded broker). A
source that does not answer raises; the caller reports it as down rather than failing the scrape.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select, text

from domain.db import session_scope
from domain.jobs.models import Job
from domain.jobs.states import JobStatus
from domain.queue import broker_folders, control_queue
from domain.settings import Settings

QUERY_TIMEOUT_MS = 2000
# kombu's Redis transport keeps a queue's messages of priority p > 0 under "<queue>\x06\x16<p>".
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITY_STEPS = (0, 3, 6, 9)


def job_counts(database_url: str) -> dict[str, int]:
    """Jobs per state, every state present (0 when none)."""
    counts = {status.value: 0 for status in JobStatus}
    with session_scope(database_url) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text(f"SET LOCAL statement_timeout = {QUERY_TIMEOUT_MS}"))
        for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
            counts[str(status)] = int(count)
    return counts


def queue_names(settings: Settings) -> list[str]:
    """The Celery queues grft uses: the job queue and the control queue."""
    return [settings.queue, control_queue(settings)]


def queue_depths(settings: Settings, timeout_s: float = 2.0) -> dict[str, int]:
    """Messages waiting on each queue (not those a worker holds unacknowledged)."""
    if settings.embedded:
        return _folder_depths(broker_folders(settings)["messages"], queue_names(settings))
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        raise ValueError("queue depths are read from Redis or the filesystem broker only")
    import redis

    client = redis.Redis.from_url(
        settings.broker_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        pipe = client.pipeline(transaction=False)
        names = queue_names(settings)
        for name in names:
            for priority in _REDIS_PRIORITY_STEPS:
                pipe.llen(name if priority == 0 else f"{name}{_REDIS_PRIORITY_SEPARATOR}{priority}")
        lengths = pipe.execute()
    finally:
        client.close()
    steps = len(_REDIS_PRIORITY_STEPS)
    return {name: sum(lengths[i * steps : (i + 1) * steps]) for i, name in enumerate(names)}


def _folder_depths(folder: Path, names: list[str]) -> dict[str, int]:
    # kombu's filesystem transport names each message "<time>_<uuid>.<queue>.msg".
    depths = dict.fromkeys(names, 0)
    if folder.is_dir():
        for path in folder.iterdir():
            for name in names:
                if path.name.endswith(f".{name}.msg"):
                    depths[name] += 1
    return depths
