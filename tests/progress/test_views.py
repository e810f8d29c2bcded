"""How the API shows a job's progress and its "auto" hyperparameters (``api.jobs.reporting``), from job
rows in each state; and how a request's "auto" reaches the stored config."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api.jobs.reporting import JobHyperparameters, Progress, build_metrics
from api.jobs.schemas import JobCreate
from api.jobs.service import build_config
from domain.jobs.models import Job
from grft_core.method.config import GRFTConfig


def row(status: str, progress: dict[str, Any] | None = None, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "steps_completed": 0, "total_steps": None, "seconds_remaining": None, "result": None,
        "method": GRFTConfig().to_dict(),
    }  # fmt: skip
    return Job(id="ftjob-x", status=status, progress=progress, **{**values, **fields})


class TestProgress:
    @pytest.mark.parametrize(
        ("status", "stored", "expected"),
        [
            ("validating_files", None, ("validating", None, None, None, None)),
            ("validating_files", {"phase": "validating", "done": 2, "total": 3, "eta_seconds": None},
             ("validating", 2, 3, 2 / 3, None)),
            ("queued", {"phase": "validating", "done": 3, "total": 3}, ("queued", None, None, None, None)),
            ("running", None, ("preparing", None, None, None, None)),
            ("running", {"phase": "selecting", "done": 5, "total": 20, "eta_seconds": 1.5},
             ("selecting", 5, 20, 0.25, 1.5)),
            ("running", {"phase": "tuning", "done": 7, "total": 7, "eta_seconds": 0.0},
             ("tuning", 7, 7, 1.0, 0.0)),
            ("cancelling", {"phase": "evaluating", "done": 1, "total": 4, "eta_seconds": 3.0},
             ("evaluating", 1, 4, 0.25, 3.0)),
            ("failed", {"phase": "training", "done": 3, "total": 12, "eta_seconds": 9.0},
             ("training", 3, 12, 0.25, None)),
        ],
    )  # fmt: skip
    def test_each_state_shows_its_phase(
        self, status: str, stored: dict[str, Any] | None, expected: tuple[Any, ...]
    ) -> None:
        p = Progress.of(row(status, stored))
        assert (p.phase, p.done, p.total, p.fraction, p.eta_seconds) == expected

    def test_training_keeps_the_openai_fields(self) -> None:
        stored = {"phase": "training", "done": 6, "total": 12, "eta_seconds": 4.0}
        p = Progress.of(row("running", stored, steps_completed=6, total_steps=12, seconds_remaining=4.0))
        assert (p.steps_completed, p.total_steps, p.seconds_remaining) == (6, 12, 4.0)
        assert (p.phase, p.fraction, p.eta_seconds) == ("training", 0.5, 4.0)

    def test_a_finished_job_is_done(self) -> None:
        stored = {"phase": "evaluating", "done": 1, "total": 1, "eta_seconds": 0.0}
        p = Progress.of(row("succeeded", stored, steps_completed=12, total_steps=12, seconds_remaining=0.5))
        assert (p.phase, p.done, p.total, p.fraction, p.eta_seconds) == ("done", 12, 12, 1.0, 0.0)
        assert p.seconds_remaining is None


class TestAuto:
    def test_request_auto_becomes_the_configs_auto_list(self) -> None:
        body = JobCreate.model_validate(
            {
                "model": "tiny-bert",
                "training_file": "file-abc",
                "hyperparameters": {"n_epochs": "auto", "batch_size": "auto"},
                "method": {
                    "type": "grft",
                    "grft": {"hyperparameters": {"learning_rate_multiplier": "auto", "k": 2}},
                },
            }
        )
        config = build_config(body, seed=3)
        assert config["auto"] == ["batch_size", "epochs", "lr"]
        assert config["k"] == 2

    def test_omitted_knobs_keep_the_library_defaults(self) -> None:
        body = JobCreate.model_validate({"model": "tiny-bert", "training_file": "file-abc"})
        assert build_config(body, seed=3)["auto"] == []

    def test_a_word_other_than_auto_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="n_epochs"):
            JobCreate.model_validate(
                {"model": "tiny-bert", "training_file": "file-abc", "hyperparameters": {"n_epochs": "many"}}
            )

    def test_auto_until_chosen_then_the_values_trained_with(self) -> None:
        config = GRFTConfig(auto=["lr", "epochs"]).to_dict()
        waiting = JobHyperparameters.of(row("running", method=config))
        assert (waiting.n_epochs, waiting.batch_size, waiting.learning_rate_multiplier) == (
            "auto",
            32,
            "auto",
        )
        chosen = {"n_epochs": 7, "batch_size": 32, "learning_rate": 3.16e-3}
        done = JobHyperparameters.of(row("succeeded", method=config, result={"hyperparameters": chosen}))
        assert (done.n_epochs, done.batch_size) == (7, 32)
        assert done.learning_rate_multiplier == pytest.approx(3.16)


def test_metrics_keep_one_point_per_step_and_epoch() -> None:
    metrics = build_metrics(
        [
            {"step": 2, "epoch": 1, "train_loss": 0.5},
            {"step": 1, "epoch": 1, "train_loss": 0.9, "lr": float("nan")},
            {"epoch": 1, "step": 2, "valid_loss": 0.4, "valid_mean_token_accuracy": 0.7},
            {"step": 2, "epoch": 1, "train_loss": 0.45},
            {"epoch": 1, "step": 2, "valid_loss": 0.35},
        ]
    )
    assert [(p.step, p.train_loss, p.lr) for p in metrics.steps] == [(1, 0.9, None), (2, 0.45, None)]
    assert [(p.epoch, p.valid_loss) for p in metrics.epochs] == [(1, 0.35)]
