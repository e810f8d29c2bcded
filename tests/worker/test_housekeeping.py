"""A worker's start: the folders it creates, what it sweeps, and stopping when its parent is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.settings import Settings
from tests.worker.conftest import MakeJob, set_job
from worker import housekeeping
from worker.housekeeping import TEMP_PREFIX, process_temp, start_time, sweep_temp, sweep_work


@pytest.fixture
def restore_tempdir() -> Iterator[None]:
    saved = tempfile.tempdir
    yield
    tempfile.tempdir = saved


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class TestSweepTemp:
    def test_removes_folders_of_dead_processes_only(self, tmp_path: Path) -> None:
        me, started = os.getpid(), start_time(os.getpid())
        assert started is not None
        live = tmp_path / f"{TEMP_PREFIX}{me}-{started}"
        dead = tmp_path / f"{TEMP_PREFIX}{_dead_pid()}-{started}"
        reused = tmp_path / f"{TEMP_PREFIX}{me}-{started + 1}"  # this pid, but another process's start
        for folder in (live, dead, reused):
            (folder / "grft-data-x").mkdir(parents=True)
            (folder / "grft-data-x" / "train.csv").write_text("text,label\n")
        unrelated = tmp_path / "grft-tmp-notapid"
        unrelated.mkdir()
        assert sorted(sweep_temp(tmp_path)) == sorted([dead, reused])
        assert live.is_dir()
        assert unrelated.is_dir()
        assert not dead.exists()
        assert not reused.exists()

    def test_legacy_data_folders_go_once_old(self, tmp_path: Path) -> None:
        old, fresh = tmp_path / "grft-data-abc123", tmp_path / "grft-data-def456"
        for folder in (old, fresh):
            folder.mkdir()
            (folder / "data.zip").write_bytes(b"PK")
        day_ago = time.time() - 24 * 3600
        os.utime(old, (day_ago, day_ago))
        assert sweep_temp(tmp_path) == [old]
        assert fresh.is_dir()


class TestProcessTemp:
    def test_temp_files_go_to_a_folder_named_after_the_process(
        self, tmp_path: Path, restore_tempdir: None
    ) -> None:
        folder = process_temp(tmp_path / "not-yet")
        assert folder == tmp_path / "not-yet" / f"{TEMP_PREFIX}{os.getpid()}-{start_time(os.getpid())}"
        with tempfile.TemporaryDirectory(prefix="grft-data-") as work:
            assert Path(work).parent == folder
        assert housekeeping.system_temp() == tmp_path / "not-yet"
        assert sweep_temp(tmp_path / "not-yet") == []  # this process is alive
        housekeeping.remove_process_temp()
        assert not folder.exists()
        assert Path(tempfile.gettempdir()) != folder


class TestSweepWork:
    def test_keeps_only_folders_of_active_leases(self, settings: Settings, make_job: MakeJob) -> None:
        running = make_job("file-x", status="running", lease_token="a" * 32)
        validating = make_job("file-x", status="validating_files", lease_token="b" * 32)
        pausing = make_job("file-x", status="pausing", lease_token="f" * 32)
        requeued = make_job("file-x", status="queued", lease_token=None)
        done = make_job("file-x", status="succeeded", lease_token="c" * 32)
        work = settings.home / "work"
        keep = [
            work / f"{running}-run-{'a' * 12}",
            work / f"{validating}-validate-{'b' * 12}",
            work / f"{pausing}-run-{'f' * 12}",  # its worker runs on to its next checkpoint
        ]
        drop = [
            work / f"{running}-run-{'9' * 12}",  # an older attempt's lease
            work / f"{validating}-run-{'b' * 12}",  # the lease is not a run's
            work / f"{requeued}-run-{'d' * 12}",  # rescued from a dead worker
            work / f"{done}-run-{'c' * 12}",
            work / f"ftjob-unknown-run-{'e' * 12}",
        ]
        for folder in keep + drop:
            (folder / "checkpoints").mkdir(parents=True)
        assert sorted(sweep_work(settings)) == sorted(drop)
        assert all(folder.is_dir() for folder in keep)
        assert not any(folder.exists() for folder in drop)
        set_job(settings, running, status="queued", lease_token=None)
        assert sweep_work(settings) == [keep[0]]

    def test_prepare_creates_the_folders_of_a_fresh_home(
        self, settings: Settings, restore_tempdir: None
    ) -> None:
        assert not settings.home.exists()
        temp = housekeeping.prepare(settings)
        assert (settings.home / "work").is_dir()
        assert temp.is_dir()
        assert tempfile.gettempdir() == str(temp)

    def test_an_unreadable_database_postpones_the_work_sweep(
        self, tmp_path: Path, restore_tempdir: None
    ) -> None:
        settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'empty.db'}")
        (settings.home / "work" / f"ftjob-x-run-{'a' * 12}").mkdir(parents=True)
        housekeeping.prepare(settings)  # no jobs table: logged, not raised
        assert (settings.home / "work" / f"ftjob-x-run-{'a' * 12}").is_dir()


WATCHED_CHILD = """
import sys, time
from worker.housekeeping import watch_parent
assert watch_parent(grace_s=float(sys.argv[1]), interval_s=0.2) is not None
print("watching", flush=True)
time.sleep(120)
"""

# The middle process starts the watched child and prints its pid; the test then SIGKILLs the middle.
MIDDLE = """
import os, subprocess, sys, time
env = {**os.environ, "GRFT_PARENT_PID": str(os.getpid())}
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=env, stdout=subprocess.PIPE)
assert child.stdout.readline() == b"watching\\n"
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited, waiting for init to reap it
            return True
        time.sleep(0.1)
    return False


class TestWatchParent:
    @pytest.mark.parametrize(
        ("code", "grace"),
        [
            pytest.param(WATCHED_CHILD, "30", id="sigterm-stops-it"),
            # SIGTERM ignored (a task that will not stop): it exits after the grace period.
            pytest.param(
                "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + WATCHED_CHILD,
                "1",
                id="exits-after-grace",
            ),
        ],
    )
    def test_a_child_stops_when_its_parent_is_killed(self, code: str, grace: str) -> None:
        middle = subprocess.Popen(
            [sys.executable, "-c", MIDDLE, code, grace], stdout=subprocess.PIPE, cwd=Path.cwd()
        )
        assert middle.stdout is not None
        child = int(middle.stdout.readline())
        try:
            assert not _gone(child, 0.5)  # watching, with its parent alive
            middle.kill()
            middle.wait()
            assert _gone(child, 10), "the child outlived its parent"
        finally:
            middle.kill()
            middle.wait()
            middle.stdout.close()
            if not _gone(child, 0):
                os.kill(child, 9)

    def test_without_a_parent_pid_nothing_is_watched(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("GRFT_PARENT_PID", raising=False)
        assert housekeeping.watch_parent() is None
