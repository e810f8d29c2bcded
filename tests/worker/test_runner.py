"""The tasks run in-process on real jobs: tiny-bert on a small CSV, through ``worker.tasks``."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from domain.adapters.models import Adapter
from domain.artifacts import ArtifactStore
from domain.db import session_scope
from domain.jobs.models import JobCheckpoint, JobEvent
from domain.queue import RUN_JOB
from domain.settings import Settings
from grft_core.method.trainer import StepInfo
from grft_core.pipeline import train_to_folder
from tests.worker.conftest import MakeJob, Sent, get_job, set_job, upload, write_csv
from worker import progress, runner, tasks


class Inject:
    """Adds callbacks to every ``train_to_folder`` call the runner makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.extra: list[Any] = []
        original = train_to_folder

        def train(*args: Any, callbacks: Any = (), **kwargs: Any) -> Any:
            return original(*args, callbacks=[*callbacks, *self.extra], **kwargs)

        monkeypatch.setattr(runner, "train_to_folder", train)


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Inject:
    return Inject(monkeypatch)


class Steps:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_step(self, info: StepInfo) -> None:
        self.seen.append(info.step)


class CrashOnce:
    """Raises at ``step`` the first time only, as a worker dying mid-run would stop."""

    def __init__(self, step: int) -> None:
        self.step, self.fired = step, False

    def on_step(self, info: StepInfo) -> None:
        if info.step == self.step and not self.fired:
            self.fired = True
            raise RuntimeError("simulated crash")


def job_events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def checkpoints(settings: Settings, job_id: str) -> list[JobCheckpoint]:
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id))
        return sorted(rows, key=lambda c: c.step)


class TestValidateAndRun:
    def test_uploaded_csv_trains_into_an_adapter(
        self, settings: Settings, make_job: MakeJob, tenant: str, dataset: Any, sent: Sent
    ) -> None:
        job_id = make_job(upload(settings, tenant, dataset))
        assert tasks.validate_job(job_id) == "queued"
        assert sent == [(RUN_JOB, job_id)]
        assert get_job(settings, job_id).status == "queued"

        assert tasks.run_job(job_id) == "succeeded"
        assert tasks.run_job(job_id) == "skipped"  # a duplicate message changes nothing
        job = get_job(settings, job_id)
        assert job.status == "succeeded"
        assert job.adapter_id is not None
        assert job.finished_at is not None
        assert job.trainable_params is not None
        assert job.trainable_params > 0
        assert job.result is not None
        assert job.result["steps"] == 12
        assert (job.steps_completed, job.total_steps) == (12, 12)

        with session_scope(settings.database_url) as session:
            adapter = session.get_one(Adapter, job.adapter_id)
        assert (adapter.tenant_id, adapter.job_id, adapter.base_model) == (tenant, job_id, "tiny-bert")
        assert adapter.config["labels"] == ["arts", "business", "sport"]
        store = ArtifactStore(settings.artifact_url)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert store.exists(f"adapters/{job.adapter_id}/{name}")

        events = job_events(settings, job_id)
        # Event types are OpenAI's (message, metrics); what a message is about is its data's kind.
        kinds = {(e.data or {}).get("kind", e.type) for e in events}
        assert {"selection", "metrics", "checkpoint", "phase"} <= kinds
        selection = next(e for e in events if (e.data or {}).get("kind") == "selection")
        assert selection.data is not None
        assert sum(selection.data["modules"].values()) == selection.data["selected"] > 0
        metrics = [e.data for e in events if e.type == "metrics" and e.data]
        per_epoch = [m for m in metrics if "valid_accuracy" in m]
        per_step = [m for m in metrics if "lr" in m]
        assert [m["epoch"] for m in per_epoch] == [1, 2]  # epochs count from 1
        assert {"train_loss", "train_accuracy", "valid_loss", "step"} <= set(per_epoch[0])
        assert [m["step"] for m in per_step] == list(range(1, 13))
        assert events[-1].message == "The job has successfully completed"

        kept = checkpoints(settings, job_id)
        assert [c.step for c in kept] == [10, 12]
        assert all(store.exists(c.uri[len(store.url) + 1 :] + "/state.json") for c in kept)
        assert list((settings.home / "work").glob(f"{job_id}*")) == []

    @pytest.mark.parametrize(
        ("case", "param", "words"),
        [
            ("no label column", "label", "`label`"),
            ("file of another tenant", "training_file", "does not exist"),
            ("path outside the dataset roots", "training_file", "under an allowed root"),
            ("bare path", "training_file", "a URI with scheme file://"),
            ("image model on text", "training_file", "takes image inputs"),
        ],
    )
    def test_user_errors_fail_validation(
        self,
        settings: Settings,
        make_job: MakeJob,
        tmp_path: Any,
        sent: Sent,
        case: str,
        param: str,
        words: str,
    ) -> None:
        roots = settings.dataset_roots[0]
        ref = {
            "no label column": lambda: write_csv(roots / "bad.csv", header=("text", "category")).as_uri(),
            "file of another tenant": lambda: "file-of-someone-else",
            "path outside the dataset roots": lambda: write_csv(tmp_path / "elsewhere.csv").as_uri(),
            "bare path": lambda: str(write_csv(roots / "bare.csv")),
            "image model on text": lambda: write_csv(roots / "news.csv").as_uri(),
        }[case]()
        job_id = make_job(ref, model="tiny-cnn" if case == "image model on text" else "tiny-bert")
        assert tasks.validate_job(job_id) == "failed"
        job = get_job(settings, job_id)
        assert job.status == "failed"
        assert job.error is not None
        assert job.error["code"] == "user_error"
        assert job.error["param"] == param
        assert words in job.error["message"]
        assert sent == []


class TestInterruptions:
    def test_cancel_mid_run(
        self,
        settings: Settings,
        make_job: MakeJob,
        dataset: Any,
        sent: Sent,
        inject: Inject,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(progress, "PROGRESS_INTERVAL_S", 0.0)
        job_id = make_job(dataset.as_uri(), status="queued")

        class CancelAt:
            def on_step(self, info: StepInfo) -> None:
                if info.step == 3:
                    set_job(settings, job_id, status="cancelling")  # what POST …/cancel does

        inject.extra = [CancelAt()]
        assert tasks.run_job(job_id) == "cancelled"
        job = get_job(settings, job_id)
        assert job.status == "cancelled"
        assert job.adapter_id is None
        assert job.finished_at is not None
        assert job.steps_completed == 4  # stopped at the next step's progress write
        assert job_events(settings, job_id)[-1].message == "The job was cancelled"
        assert sent == []

    def test_crash_after_checkpoint_resumes_there(
        self,
        settings: Settings,
        make_job: MakeJob,
        dataset: Any,
        sent: Sent,
        inject: Inject,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        job_id = make_job(dataset.as_uri(), status="queued")
        inject.extra = [CrashOnce(5)]
        assert tasks.run_job(job_id) == "queued"
        assert sent == [(RUN_JOB, job_id)]
        assert [c.step for c in checkpoints(settings, job_id)] == [2, 4]
        assert list((settings.home / "work").glob(f"{job_id}*")) == []  # the resume comes from the store

        steps = Steps()
        inject.extra = [steps]
        assert tasks.run_job(job_id) == "succeeded"
        assert steps.seen == list(range(5, 13))
        job = get_job(settings, job_id)
        assert (job.status, job.attempt) == ("succeeded", 2)
        messages = [e.message for e in job_events(settings, job_id)]
        assert "Resuming from the checkpoint at step 4" in messages
        # The tenant reads a reference; the worker's log holds the exception under it.
        failed = [m for m in messages if m.startswith("Attempt 1 failed (internal error (reference ")]
        assert len(failed) == 1
        reference = failed[0].split("reference ")[1][:12]
        assert "simulated crash" not in failed[0]
        assert any(
            reference in r.getMessage() and "simulated crash" in r.getMessage() for r in caplog.records
        )

    def test_crash_on_the_last_attempt_fails_the_job(
        self,
        settings: Settings,
        make_job: MakeJob,
        dataset: Any,
        sent: Sent,
        inject: Inject,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        job_id = make_job(dataset.as_uri(), status="queued", max_attempts=1)
        inject.extra = [CrashOnce(1)]
        assert tasks.run_job(job_id) == "failed"
        job = get_job(settings, job_id)
        assert job.error is not None
        assert job.error["code"] == "error"
        assert job.error["message"].startswith("internal error (reference ")
        assert "simulated crash" not in job.error["message"]
        reference = job.error["message"].split("reference ")[1][:12]
        assert any(
            reference in r.getMessage() and "simulated crash" in r.getMessage() for r in caplog.records
        )
        assert sent == []


class TestBadInputFailsAsUserError:
    """Problems only the data or the model can reveal end the job as ``failed`` with ``user_error``."""

    def test_corrupt_image_names_the_file(self, settings: Settings, make_job: MakeJob, sent: Sent) -> None:
        from grft_core.data.samples import digits_image_folder

        folder = digits_image_folder(settings.dataset_roots[0] / "digits", size=32, limit_per_class=3)
        (folder / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
        job_id = make_job(folder.as_uri(), model="tiny-cnn")
        assert tasks.validate_job(job_id) == "failed"
        job = get_job(settings, job_id)
        assert job.error is not None
        assert job.error["code"] == "user_error"
        assert "broken.png" in job.error["message"]
        assert sent == []

    def test_k_larger_than_every_matrix(
        self, settings: Settings, make_job: MakeJob, dataset: Any, sent: Sent
    ) -> None:
        from tests.worker.conftest import METHOD

        job_id = make_job(dataset.as_uri(), method={**METHOD, "k": 60_000})
        assert tasks.validate_job(job_id) == "queued"
        assert tasks.run_job(job_id) == "failed"
        job = get_job(settings, job_id)
        assert job.status == "failed"
        assert job.error is not None
        assert job.error["code"] == "user_error"
        assert job.error["param"] == "k"
        assert "larger than every eligible matrix" in job.error["message"]
