"""What a worker does on start: create the folders it writes, sweep what dead processes left there,
and stop itself when the process that started it is gone.

- Temp: each worker writes its temporary files (extracted datasets, ``grft-data-*``) under its own
  ``grft-tmp-<pid>-<start time>`` folder of the system temp folder; a folder whose process is no longer
  alive (checked in ``/proc``: pid and start time, so a reused pid does not count) is removed.
- Work: ``GRFT_HOME/work/<job>-<purpose>-<token>`` belongs to a lease; a folder whose lease the database
  no longer shows as active (the job finished, or was re-queued under another token) is removed.
- Parent: a worker started with ``GRFT_PARENT_PID`` (``grft serve``'s embedded worker) asks the kernel
  for SIGTERM when its parent dies and also polls its parent pid, so that killing ``serve`` with
  SIGKILL still leaves no worker behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from domain.db import session_scope
from domain.jobs.models import Job
from domain.jobs.states import JobStatus
from domain.processes import die_with_parent
from domain.settings import Settings

log = logging.getLogger(__name__)

PARENT_PID_ENV = "GRFT_PARENT_PID"
TEMP_PREFIX = "grft-tmp-"
# Left directly in the system temp folder by workers that did not have a folder of their own yet.
LEGACY_TEMP_PREFIX = "grft-data-"
# A legacy folder carries no owner: only one this old is surely abandoned (a dataset load takes minutes).
LEGACY_TEMP_MAX_AGE_S = 6 * 3600
# Which job statuses a work folder's purpose is alive in.
_LIVE_STATUSES = {
    "validate": (JobStatus.VALIDATING_FILES, JobStatus.CANCELLING),
    # A pausing job's worker runs on until its next checkpoint is stored.
    "run": (JobStatus.RUNNING, JobStatus.PAUSING, JobStatus.CANCELLING),
}
# How long a worker whose parent died may finish its current step before it exits (as ``grft serve``
# gives it on a normal stop); the job it held is re-queued by the reconciler.
PARENT_GONE_GRACE_S = 10.0


# --- processes ---------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat``), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def is_alive(pid: int, started: int) -> bool:
    """True when ``pid`` runs and is the process that started at ``started`` (not a reused pid)."""
    return start_time(pid) == started


# --- folders -----------------------------------------------------------------------------------------


def system_temp() -> Path:
    """The system temp folder (``TMPDIR``, else ``/tmp``), even after :func:`process_temp`."""
    current = Path(tempfile.gettempdir())
    return current.parent if current.name.startswith(TEMP_PREFIX) else current


def process_temp(root: Path | None = None) -> Path:
    """Create this process's temp folder under ``root`` (default: the system one) and make it the
    default of :mod:`tempfile`; returns it."""
    pid = os.getpid()
    started = start_time(pid)
    folder = (root or system_temp()) / f"{TEMP_PREFIX}{pid}-{started if started is not None else 0}"
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(folder)
    return folder


def sweep_temp(root: Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the temp folders of dead processes under ``root``; returns what was removed."""
    root = root or system_temp()
    now = time.time() if now is None else now
    removed = []
    for path in sorted(root.glob(f"{TEMP_PREFIX}*")) + sorted(root.glob(f"{LEGACY_TEMP_PREFIX}*")):
        if path.is_symlink() or not path.is_dir() or not _abandoned(path, now):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


def _abandoned(path: Path, now: float) -> bool:
    try:
        if path.stat().st_uid != os.getuid():
            return False  # another user's: not ours to judge
        if path.name.startswith(LEGACY_TEMP_PREFIX):
            return now - path.stat().st_mtime > LEGACY_TEMP_MAX_AGE_S
    except OSError:
        return False
    pid, _, started = path.name.removeprefix(TEMP_PREFIX).partition("-")
    if not (pid.isdigit() and started.isdigit()):
        return False
    if not Path("/proc/self").exists():
        return False  # no way to tell who is alive: keep everything
    return not is_alive(int(pid), int(started))


def sweep_work(settings: Settings) -> list[Path]:
    """Remove the folders of ``GRFT_HOME/work`` whose lease is not active in the database."""
    work = settings.home / "work"
    # List first, read the database second: a folder is created only after its claim is committed,
    # so every folder listed here has its lease visible to the query below.
    folders: dict[str, list[tuple[Path, str, str]]] = {}
    for path in sorted(work.iterdir()) if work.is_dir() else []:
        parts = path.name.rsplit("-", 2)
        if len(parts) == 3 and path.is_dir() and not path.is_symlink():
            folders.setdefault(parts[0], []).append((path, parts[1], parts[2]))
    if not folders:
        return []
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Job.id, Job.status, Job.lease_token).where(Job.id.in_(list(folders)))
        ).all()
    leases = {job_id: (status, token or "") for job_id, status, token in rows}
    removed = []
    for job_id, entries in folders.items():
        status, token = leases.get(job_id, ("", ""))
        for path, purpose, prefix in entries:
            if status in _LIVE_STATUSES.get(purpose, ()) and token.startswith(prefix):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_process_temp() -> None:
    """Remove this process's temp folder (at a clean exit; a crash leaves it to the next sweep)."""
    current = Path(tempfile.gettempdir())
    if current.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-"):
        tempfile.tempdir = None
        shutil.rmtree(current, ignore_errors=True)


def prepare(settings: Settings) -> Path:
    """Create ``GRFT_HOME``, its work folder and this process's temp folder, then sweep what dead
    processes left in temp and work. Returns the temp folder. A database that cannot be read (not yet
    migrated, unreachable) only postpones the work sweep to the next start."""
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "work").mkdir(parents=True, exist_ok=True)
    for path in sweep_temp():
        log.info("removed %s, left by a process that is gone", path)
    temp = process_temp()
    try:
        for path in sweep_work(settings):
            log.info("removed %s: its lease is over", path)
    except SQLAlchemyError as exc:
        log.warning("work folders not swept (database unavailable: %s)", exc)
    return temp


# --- the parent ----------------------------------------------------------------------------------------


def watch_parent(grace_s: float = PARENT_GONE_GRACE_S, interval_s: float = 1.0) -> threading.Thread | None:
    """If ``GRFT_PARENT_PID`` names this process's parent, stop when the parent dies: SIGTERM (a warm
    shutdown), then exit after ``grace_s`` if a task still holds on. Returns the watching thread."""
    # Taken out of the environment: a process this one starts has another parent.
    expected = os.environ.pop(PARENT_PID_ENV, "")
    if not expected.isdigit():
        return None
    parent = int(expected)
    if not die_with_parent():  # the thread below still works
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        log.warning("the parent process %s is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        log.error("still running %.0f s after the parent died: exiting", grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="grft-parent-watch", daemon=True)
    thread.start()
    return thread
