"""``GET /v1/fine_tuning/jobs/{id}/checkpoints`` and ``…/metrics``: checkpoints latest step first, and the
metric series built from the job's metric events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from domain.jobs.models import Job, JobCheckpoint
from tests.api.jobs.helpers import Auth, add_events


class TestCheckpoints:
    def test_pages_latest_step_first(self, client: TestClient, auth: Auth, job_id: str, db: Session) -> None:
        base = datetime.now(UTC)
        for i, step in enumerate((50, 100, 150)):
            db.add(
                JobCheckpoint(
                    id=f"ckpt-{step}", job_id=job_id, step=step, uri=f"file:///c/{step}",
                    metrics={"train_loss": 1.0 / step}, created_at=base + timedelta(seconds=i),
                )
            )  # fmt: skip
        db.commit()
        url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"

        first = client.get(url, headers=auth, params={"limit": 2}).json()
        rest = client.get(url, headers=auth, params={"after": first["last_id"]}).json()

        assert [c["step_number"] for c in first["data"]] == [150, 100]
        assert first["has_more"] is True
        assert [c["step_number"] for c in rest["data"]] == [50]
        assert rest["has_more"] is False
        checkpoint = first["data"][0]
        assert checkpoint["object"] == "fine_tuning.job.checkpoint"
        tenant = db.get(Job, job_id).tenant_id  # type: ignore[union-attr]
        short = job_id.removeprefix("ftjob-")
        # OpenAI's form: the fine-tuned model id the job will have, plus the step.
        assert checkpoint["fine_tuned_model_checkpoint"] == f"ft:tiny-bert:{tenant}::{short}:ckpt-step-150"
        assert checkpoint["metrics"] == {"step": 150, "train_loss": 1.0 / 150}


class TestMetrics:
    def test_step_and_epoch_curves_from_metric_events(
        self, client: TestClient, auth: Auth, job_id: str, db: Session
    ) -> None:
        add_events(
            db, job_id,
            ("metrics", {"step": 1, "epoch": 1, "train_loss": 0.9, "train_accuracy": 0.5, "lr": 0.001}),
            ("message", {"train_loss": 123.0}),
            ("metrics", {"step": 2, "epoch": 1, "train_loss": 0.7, "lr": 0.002}),
            ("metrics", {"epoch": 1, "step": 2, "train_loss": 0.8, "valid_loss": 0.6, "valid_accuracy": 0.8}),
        )  # fmt: skip

        metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", headers=auth).json()

        assert metrics["object"] == "fine_tuning.job.metrics"
        assert metrics["steps"] == [
            {"step": 1, "epoch": 1, "train_loss": 0.9, "train_accuracy": 0.5, "lr": 0.001},
            {"step": 2, "epoch": 1, "train_loss": 0.7, "lr": 0.002},
        ]
        assert metrics["epochs"] == [
            {"epoch": 1, "step": 2, "train_loss": 0.8, "valid_loss": 0.6, "valid_accuracy": 0.8}
        ]

    def test_a_resumed_run_replaces_the_steps_it_trained_again(
        self, client: TestClient, auth: Auth, job_id: str, db: Session
    ) -> None:
        # The first attempt reached step 3 and checkpointed at 2; the second trained step 3 again.
        add_events(
            db, job_id,
            ("metrics", {"step": 1, "epoch": 1, "train_loss": 0.9}),
            ("metrics", {"step": 2, "epoch": 1, "train_loss": 0.8}),
            ("metrics", {"step": 3, "epoch": 2, "train_loss": 0.75}),
            ("metrics", {"epoch": 1, "step": 2, "valid_loss": 0.7, "valid_accuracy": 0.6}),
            ("metrics", {"step": 3, "epoch": 2, "train_loss": 0.7}),
            ("metrics", {"step": 4, "epoch": 2, "train_loss": 0.6}),
        )  # fmt: skip

        metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", headers=auth).json()

        assert [(p["step"], p["train_loss"]) for p in metrics["steps"]] == [
            (1, 0.9),
            (2, 0.8),
            (3, 0.7),
            (4, 0.6),
        ]
        assert [p["epoch"] for p in metrics["epochs"]] == [1]

    def test_events_of_earlier_versions_keep_their_curves(
        self, client: TestClient, auth: Auth, job_id: str, db: Session
    ) -> None:
        add_events(
            db, job_id,
            ("metrics", {"step": 1, "train_loss": 0.9, "lr": 0.001}),
            ("metrics", {"epoch": 1, "step": 1, "train_loss": 0.9, "val_loss": 0.6, "val_accuracy": 0.8}),
        )  # fmt: skip

        metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", headers=auth).json()

        assert metrics["steps"] == [{"step": 1, "train_loss": 0.9, "lr": 0.001}]
        assert metrics["epochs"] == [
            {"epoch": 1, "step": 1, "train_loss": 0.9, "valid_loss": 0.6, "valid_accuracy": 0.8}
        ]
