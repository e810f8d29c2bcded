"""A job reports to W&B (offline) and MLflow (a file store) while it trains: hyperparameters, per-step
and per-epoch metrics, the final result; a tracker that fails never fails the job."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from domain.db import session_scope
from domain.jobs.models import JobEvent
from domain.settings import Settings
from grft_core.method.trainer import StepInfo
from tests.integrations.wandb_files import offline_run
from tests.worker.conftest import MakeJob, Sent, get_job, upload
from worker import runner, tasks

STEPS = 12  # tiny-bert on 48 rows: 2 epochs of 6 steps (tests.worker.conftest.METHOD)


def tracking_events(settings: Settings, job_id: str) -> list[str]:
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        return [e.message for e in rows if (e.data or {}).get("kind") == "tracking"]


def mlflow_store(settings: Settings) -> Path:
    return settings.home / "tracking" / "mlruns"


def mlflow_run(uri: str, experiment: str) -> tuple[Any, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    [run] = client.search_runs([found.experiment_id])
    return client, run


def train(settings: Settings, make_job: MakeJob, tenant: str, dataset: Path, integrations: Any) -> str:
    job_id = make_job(upload(settings, tenant, dataset), integrations=integrations)
    assert tasks.validate_job(job_id) == "queued"
    assert tasks.run_job(job_id) == "succeeded"
    return job_id


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tracker sets these when it needs them; the test puts the process environment back after.
    for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def test_job_reports_to_wandb_and_mlflow(
    settings: Settings,
    make_job: MakeJob,
    tenant: str,
    dataset: Path,
    sent: Sent,
    wandb_dir: Path,
    mlflow_env: None,
) -> None:
    uri = mlflow_store(settings).as_uri()
    job_id = train(
        settings,
        make_job,
        tenant,
        dataset,
        [
            {"type": "wandb", "wandb": {"project": "grft-tests", "name": "news", "tags": ["ci", "tiny"]}},
            {"type": "mlflow", "mlflow": {"tracking_uri": uri, "experiment_name": "grft-news"}},
        ],
    )
    assert tracking_events(settings, job_id) == []
    job = get_job(settings, job_id)
    assert job.result is not None

    # W&B: the offline run file, read record by record.
    run = offline_run(wandb_dir)
    assert (run["run"].project, run["run"].display_name, run["run"].run_group) == (
        "grft-tests",
        "news",
        job_id,
    )
    assert list(run["run"].tags) == ["ci", "tiny"]
    assert run["config"]["k"] == 2
    assert run["config"]["job_id"] == job_id
    assert run["config"]["model"] == "tiny-bert"
    step_rows = [h for h in run["history"] if "train_loss" in h]
    assert [h["_step"] for h in step_rows] == list(range(1, STEPS + 1))
    assert any(h["lr"] > 0 for h in step_rows)  # (warm-up may start from 0)
    epoch_rows = [h for h in run["history"] if "val_accuracy" in h]
    assert [h["epoch"] for h in epoch_rows] == [1, 2]
    assert run["summary"]["final_val_accuracy"] == pytest.approx(epoch_rows[-1]["val_accuracy"])
    assert run["exit_code"] == 0

    # MLflow: the file store, through MLflow's own client.
    client, mlrun = mlflow_run(uri, "grft-news")
    assert mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == job_id
    assert mlrun.data.tags["grft.job_id"] == job_id
    assert mlrun.data.params["k"] == "2"
    assert mlrun.data.params["training_file"] == job.training_file
    losses = client.get_metric_history(mlrun.info.run_id, "train_loss")
    assert sorted(m.step for m in losses) == list(range(1, STEPS + 1))
    accuracies = client.get_metric_history(mlrun.info.run_id, "val_accuracy")
    assert len(accuracies) == 2
    assert mlrun.data.metrics["final_val_accuracy"] == pytest.approx(epoch_rows[-1]["val_accuracy"])


def test_unreachable_tracker_does_not_fail_the_job(
    settings: Settings,
    make_job: MakeJob,
    tenant: str,
    dataset: Path,
    sent: Sent,
    mlflow_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allowed = settings.model_copy(update={"webhook_allow_hosts": ["127.0.0.1"]})
    monkeypatch.setattr(tasks, "_settings", lambda: allowed)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the block ends
    job_id = train(
        allowed,
        make_job,
        tenant,
        dataset,
        [{"type": "mlflow", "mlflow": {"tracking_uri": f"http://127.0.0.1:{port}", "experiment_name": "e"}}],
    )
    [message] = tracking_events(settings, job_id)
    assert message.startswith("Tracking with mlflow could not start (")
    assert str(port) not in message  # the class of the failure, nothing the remote side said


def test_tracker_failing_mid_run_stops_alone(
    settings: Settings,
    make_job: MakeJob,
    tenant: str,
    dataset: Path,
    sent: Sent,
    mlflow_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = mlflow_store(settings)
    original = runner.train_to_folder

    class LoseTheStore:
        """The tracking store disappears half-way through (a volume unmounted)."""

        def on_step(self, info: StepInfo) -> None:
            if info.step == STEPS // 2:
                shutil.rmtree(store)

    def train_to_folder(*args: Any, callbacks: Any = (), **kwargs: Any) -> Any:
        return original(*args, callbacks=[LoseTheStore(), *callbacks], **kwargs)

    monkeypatch.setattr(runner, "train_to_folder", train_to_folder)
    job_id = train(
        settings,
        make_job,
        tenant,
        dataset,
        [{"type": "mlflow", "mlflow": {"tracking_uri": store.as_uri(), "experiment_name": "e"}}],
    )
    [message] = tracking_events(settings, job_id)
    assert message.startswith("Tracking with mlflow stopped (")
    assert "while logging a step" in message
    assert get_job(settings, job_id).status == "succeeded"
