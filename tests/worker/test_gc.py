"""``domain.gc.collect_garbage`` on real artifact folders and the real database: checkpoints of jobs
finished past the retention go (rows and files), adapters stay, deleted jobs' folders and stale temp
entries go; a second run, or two at once, change nothing more."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from api.cli import upgrade_database
from domain.adapters.models import Adapter
from domain.artifacts import ArtifactStore, checkpoints_key, job_key
from domain.auth.models import Tenant
from domain.db import get_engine, session_scope, try_advisory_xact_lock, utcnow
from domain.gc import Collected, collect_garbage
from domain.ids import new_id
from domain.jobs.models import Job, JobCheckpoint
from domain.jobs.states import JobStatus
from domain.settings import Settings
from tests.postgres import fresh_database
from tests.worker.conftest import MakeJob, get_job
from worker import reconcile as reconciler
from worker import tasks

NOW = utcnow()
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of this module's own: a collection sweeps every tenant's finished jobs, so jobs that
    other test modules left in the shared worker database would be swept (and counted) too."""
    with fresh_database("grft_gc") as url:
        yield url


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.artifact_url)


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def add_checkpoints(
    settings: Settings, store: ArtifactStore, job_id: str, tmp: Path, steps: tuple[int, ...]
) -> None:
    """What ``worker.progress`` stores: the selection, then one folder and one row per step."""
    root = checkpoints_key(job_id)
    store.put_folder(f"{root}/selection", write_folder(tmp / job_id / "selection", {"rows.json": b"[1, 2]"}))
    with session_scope(settings.database_url) as session:
        for step in steps:
            name = f"step-{step:06d}"
            folder = write_folder(tmp / job_id / name, {"state.json": b"{}", "head.safetensors": b"\0" * 32})
            uri = store.put_folder(f"{root}/{name}", folder)
            session.add(JobCheckpoint(id=new_id("ftckpt"), job_id=job_id, step=step, uri=uri))


def finished(make_job: MakeJob, status: str, ago: timedelta) -> str:
    return make_job("file-x", status=status, finished_at=NOW - ago)


def checkpoint_rows(settings: Settings, job_id: str) -> int:
    with session_scope(settings.database_url) as session:
        stmt = select(func.count()).select_from(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
        return int(session.scalar(stmt) or 0)


def age(path: Path, by: timedelta) -> None:
    """Set the modification time of ``path`` (and everything under it) to ``by`` before NOW."""
    stamp = (NOW - by).timestamp()
    for p in [path, *path.rglob("*")]:
        os.utime(p, (stamp, stamp))


class TestCheckpoints:
    def test_finished_past_retention_lose_their_checkpoints(
        self, settings: Settings, store: ArtifactStore, make_job: MakeJob, tenant: str, tmp_path: Path
    ) -> None:
        settings.checkpoint_retention_hours = 24
        old = {
            s: finished(make_job, s, 30 * HOUR)
            for s in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SUCCEEDED)
        }
        recent = finished(make_job, JobStatus.FAILED, 2 * HOUR)
        running = make_job("file-x", status=JobStatus.RUNNING)
        for job_id in [*old.values(), recent, running]:
            add_checkpoints(settings, store, job_id, tmp_path, (2, 4))
        adapter_id = new_id("adapter")
        uri = store.put_folder(
            f"adapters/{adapter_id}", write_folder(tmp_path / "adapter", {"adapter_config.json": b"{}"})
        )
        with session_scope(settings.database_url) as session:
            owner = old[JobStatus.SUCCEEDED]
            session.add(
                Adapter(id=adapter_id, tenant_id=tenant, job_id=owner, base_model="tiny-bert",
                        method="grft", uri=uri, bytes=2)
            )  # fmt: skip

        collected = collect_garbage(settings, NOW)

        assert collected.checkpoint_rows == 6
        assert sorted(collected.job_folders) == sorted(job_key(j) for j in old.values())
        assert collected.failed == []
        for status, job_id in old.items():
            assert checkpoint_rows(settings, job_id) == 0
            assert not store.exists(job_key(job_id))
            assert get_job(settings, job_id).status == status  # the job itself stays
        for job_id in (recent, running):
            assert checkpoint_rows(settings, job_id) == 2
            assert store.exists(f"{checkpoints_key(job_id)}/step-000004/head.safetensors")
            assert store.exists(f"{checkpoints_key(job_id)}/selection/rows.json")
        # The succeeded job keeps its adapter, row and files.
        assert store.exists(f"adapters/{adapter_id}/adapter_config.json")
        with session_scope(settings.database_url) as session:
            assert session.get(Adapter, adapter_id) is not None

    def test_retention_boundary(
        self, settings: Settings, store: ArtifactStore, make_job: MakeJob, tmp_path: Path
    ) -> None:
        settings.checkpoint_retention_hours = 6
        past = finished(make_job, JobStatus.CANCELLED, 6 * HOUR + timedelta(seconds=1))
        within = finished(make_job, JobStatus.CANCELLED, 6 * HOUR - timedelta(seconds=1))
        for job_id in (past, within):
            add_checkpoints(settings, store, job_id, tmp_path, (2,))

        collect_garbage(settings, NOW)

        assert (checkpoint_rows(settings, past), checkpoint_rows(settings, within)) == (0, 1)
        assert (store.exists(job_key(past)), store.exists(job_key(within))) == (False, True)

    def test_a_second_run_changes_nothing(
        self, settings: Settings, store: ArtifactStore, make_job: MakeJob, tmp_path: Path
    ) -> None:
        job_id = finished(make_job, JobStatus.FAILED, 48 * HOUR)
        add_checkpoints(settings, store, job_id, tmp_path, (2, 4))
        first = collect_garbage(settings, NOW)
        assert (first.checkpoint_rows, first.job_folders) == (2, [job_key(job_id)])

        assert collect_garbage(settings, NOW) == Collected()

    def test_files_left_without_rows_go_on_the_next_run(
        self, settings: Settings, store: ArtifactStore, make_job: MakeJob, tmp_path: Path
    ) -> None:
        # A run that died between committing the row deletions and removing the files.
        job_id = finished(make_job, JobStatus.FAILED, 48 * HOUR)
        add_checkpoints(settings, store, job_id, tmp_path, ())

        collected = collect_garbage(settings, NOW)

        assert (collected.checkpoint_rows, collected.job_folders) == (0, [job_key(job_id)])
        assert not store.exists(job_key(job_id))

    def test_folders_of_deleted_jobs_go(
        self, settings: Settings, store: ArtifactStore, make_job: MakeJob, tmp_path: Path
    ) -> None:
        gone = new_id("ftjob")  # no row: the job was deleted, its files were not
        add_checkpoints(settings, store, gone, tmp_path, ())
        live = make_job("file-x", status=JobStatus.QUEUED)
        add_checkpoints(settings, store, live, tmp_path, (2,))

        collected = collect_garbage(settings, NOW)

        assert collected.job_folders == [job_key(gone)]
        assert store.exists(f"{checkpoints_key(live)}/step-000002/state.json")

    def test_two_runs_at_once(
        self, settings: Settings, store: ArtifactStore, make_job: MakeJob, tmp_path: Path
    ) -> None:
        jobs = [finished(make_job, JobStatus.FAILED, 30 * HOUR) for _ in range(6)]
        for job_id in jobs:
            add_checkpoints(settings, store, job_id, tmp_path, (2, 4, 6))
        results: list[Collected] = []
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def run() -> None:
            try:
                start.wait()
                results.append(collect_garbage(settings, NOW))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        assert errors == []
        assert sum(r.checkpoint_rows for r in results) == 18
        assert all(r.failed == [] for r in results)
        assert store.children("jobs") == []
        assert all(checkpoint_rows(settings, job_id) == 0 for job_id in jobs)


class TestTemp:
    def test_stale_entries_go_fresh_ones_stay(
        self, settings: Settings, store: ArtifactStore, tmp_path: Path
    ) -> None:
        settings.temp_ttl_hours = 6
        tmp = Path(store.path("tmp"))
        partial = write_folder(tmp, {"0a1b": b"half an upload"}) / "0a1b"
        staging = write_folder(tmp / "c2d3", {"adapter/adapter_model.safetensors": b"\0" * 16})
        writing = write_folder(tmp / "e4f5", {"old.bin": b"x", "new.bin": b"y"})
        fresh = write_folder(tmp, {"9f8e": b"an upload in progress"}) / "9f8e"
        age(partial, 7 * HOUR)
        age(staging, 7 * HOUR)
        age(writing, 7 * HOUR)
        age(writing / "new.bin", timedelta(minutes=1))  # still being written to
        age(fresh, 5 * HOUR)
        upload = write_folder(Path(store.path("files/tenant-a")), {"file-1": b"a kept upload"}) / "file-1"
        age(upload, 100 * HOUR)

        collected = collect_garbage(settings, NOW)

        assert sorted(collected.temp_entries) == ["tmp/0a1b", "tmp/c2d3"]
        assert store.children("tmp") == ["9f8e", "e4f5"]
        assert upload.read_bytes() == b"a kept upload"
        assert collect_garbage(settings, NOW).temp_entries == []

    def test_empty_store(self, settings: Settings) -> None:
        assert collect_garbage(settings, NOW) == Collected()


class TestOnSqlite:
    def test_embedded_database(self, tmp_path: Path) -> None:
        home = tmp_path / "home"
        settings = Settings(
            home=home,
            database_url=f"sqlite:///{home / 'grft.db'}",
            artifact_url=(home / "artifacts").as_uri(),
            checkpoint_retention_hours=24,
        )
        upgrade_database(settings)
        store = ArtifactStore(settings.artifact_url)
        with session_scope(settings.database_url) as session:
            session.add(Tenant(id="tenant-local", name="local"))
            for job_id, ago in (("ftjob-old", 25 * HOUR), ("ftjob-new", 23 * HOUR)):
                session.add(Job(id=job_id, tenant_id="tenant-local", model="tiny-bert", training_file="f",
                                status=JobStatus.FAILED, finished_at=NOW - ago))  # fmt: skip
        for job_id in ("ftjob-old", "ftjob-new"):
            add_checkpoints(settings, store, job_id, tmp_path, (2,))

        collected = collect_garbage(settings, NOW)

        assert (collected.checkpoint_rows, collected.job_folders) == (1, ["jobs/ftjob-old"])
        assert checkpoint_rows(settings, "ftjob-new") == 1
        get_engine(settings.database_url).dispose()


class TestAfterARealRun:
    def test_trained_job_keeps_its_adapter(
        self,
        settings: Settings,
        make_job: MakeJob,
        dataset: Any,
        store: ArtifactStore,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(tasks, "_settings", lambda: settings)
        monkeypatch.setattr(tasks, "_publish", lambda name, job_id: None)
        job_id = make_job(dataset.as_uri(), status=JobStatus.QUEUED)
        assert tasks.run_job(job_id) == "succeeded"
        job = get_job(settings, job_id)
        assert checkpoint_rows(settings, job_id) == 2
        assert store.children(checkpoints_key(job_id))  # what the worker really stored
        assert job.finished_at is not None

        collect_garbage(settings, job.finished_at + timedelta(hours=settings.checkpoint_retention_hours - 1))
        assert checkpoint_rows(settings, job_id) == 2  # within the retention
        collected = collect_garbage(
            settings, job.finished_at + timedelta(hours=settings.checkpoint_retention_hours + 1)
        )

        assert (collected.checkpoint_rows, collected.job_folders) == (2, [job_key(job_id)])
        assert not store.exists(job_key(job_id))
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert store.exists(f"adapters/{job.adapter_id}/{name}")
        assert get_job(settings, job_id).status == JobStatus.SUCCEEDED


class TestPeriodic:
    """Workers collect from their reconciler thread, one at a time through an advisory lock."""

    def test_collect_runs_under_the_lock_and_skips_while_another_holds_it(
        self, settings: Settings, store: ArtifactStore, tmp_path: Path
    ) -> None:
        settings.temp_ttl_hours = 1
        stale = write_folder(Path(store.path("tmp")), {"0a1b": b"half an upload"}) / "0a1b"
        age(stale, 2 * HOUR)
        with session_scope(settings.database_url) as holder:
            assert try_advisory_xact_lock(holder, reconciler.GC_LOCK)
            assert reconciler.collect(settings) is None  # another worker is collecting
            assert stale.exists()
        collected = reconciler.collect(settings)
        assert collected is not None
        assert collected.temp_entries == ["tmp/0a1b"]
        assert not stale.exists()

    def test_the_reconciler_thread_collects(self, settings: Settings, store: ArtifactStore) -> None:
        settings.temp_ttl_hours = 1
        settings.gc_seconds = 2  # the first collection falls within the first period
        stale = write_folder(Path(store.path("tmp")), {"0a1b": b"half an upload"}) / "0a1b"
        age(stale, 2 * HOUR)
        stop = threading.Event()
        sent: list[tuple[str, str]] = []
        thread = threading.Thread(
            target=reconciler.reconcile_forever,
            args=(settings, lambda name, job: sent.append((name, job)), stop),
            daemon=True,
        )
        thread.start()
        try:
            for _ in range(600):
                if not stale.exists():
                    break
                threading.Event().wait(0.1)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert not stale.exists()
        assert not thread.is_alive()
