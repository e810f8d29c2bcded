"""Divergence recovery in the trainer: a non-finite or runaway loss rolls the step back to the last good
state with the learning rate halved, at most three times, and is reported; past that the run fails
rather than produce a useless adapter."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from grft_core.data.preprocess import make_preprocessor
from grft_core.method.config import GRFTConfig
from grft_core.method.divergence import DivergenceGuard, TrainingDiverged
from grft_core.method.steps import BatchLoss, classification_loss
from grft_core.method.trainer import StepInfo, fit
from tests.conftest import make_images

CONFIG = GRFTConfig(
    method="linear_probe", epochs=2, batch_size=8, image_size=16, lr=1e-2, warmup_ratio=0.0, device="cpu"
)


@pytest.fixture(scope="module")
def task(registry: Any) -> dict[str, Any]:
    items, labels = make_images(72, 2, size=16)
    model, spec = registry.load("tiny-cnn", num_labels=2, seed=0)
    return {"model": model, "pre": make_preprocessor(spec, image_size=16), "items": items, "labels": labels}


class PoisonAt:
    """The classification loss, made NaN at the given calls (counted over every training batch)."""

    def __init__(self, *calls: int) -> None:
        self.calls, self.at = 0, set(calls)

    def __call__(self, model: torch.nn.Module, inputs: Any, labels: torch.Tensor) -> BatchLoss:
        self.calls += 1
        batch = classification_loss(model, inputs, labels)
        if self.calls in self.at:
            batch.loss = batch.loss * math.nan
        return batch


class Heard:
    def __init__(self) -> None:
        self.steps: list[StepInfo] = []
        self.divergences: list[Any] = []

    def on_step(self, info: StepInfo) -> None:
        self.steps.append(info)

    def on_divergence(self, event: Any) -> None:
        self.divergences.append(event)


def run(task: dict[str, Any], config: GRFTConfig, loss_fn: Any, heard: Heard) -> Any:
    items, labels = task["items"], task["labels"]
    return fit(copy.deepcopy(task["model"]), items[:64], labels[:64], items[64:], labels[64:], task["pre"],
               config, callbacks=[heard], evaluate_initial=False, loss_fn=loss_fn)  # fmt: skip


def test_a_nan_loss_rolls_back_and_halves_the_rate(task: dict[str, Any]) -> None:
    clean, poisoned = Heard(), Heard()
    reference = run(task, CONFIG, classification_loss, clean)
    result = run(task, CONFIG, PoisonAt(5), poisoned)

    assert [d.retry for d in poisoned.divergences] == [1]
    event = poisoned.divergences[0]
    assert (event.step, event.restored_step, event.lr_scale) == (4, 0, 0.5)
    assert "nan" in event.reason
    assert result.divergences == [event.__dict__]
    # The poisoned batch made no update: one step fewer, and every later rate is half the schedule's.
    assert result.steps == reference.steps - 1
    assert all(math.isfinite(v) for v in result.losses)
    scheduled = {s.step: s.lr for s in clean.steps}
    after = [s for s in poisoned.steps if s.step > 4]
    assert after
    for info in after:
        assert info.lr == pytest.approx(0.5 * scheduled[info.step], rel=1e-6)


def test_gives_up_after_three_halvings(task: dict[str, Any]) -> None:
    heard = Heard()
    with pytest.raises(TrainingDiverged, match="after 3 learning-rate halvings") as caught:
        run(task, CONFIG, PoisonAt(*range(3, 100)), heard)
    assert caught.value.param == "learning_rate"
    assert [d.lr_scale for d in heard.divergences] == [0.5, 0.25, 0.125]


class TestGuard:
    def test_a_loss_three_times_its_start_is_divergence(self) -> None:
        guard = DivergenceGuard(window=3)
        assert [guard.check(v) for v in (1.0, 1.1, 0.9, 2.0, 2.5)] == [None] * 5
        assert guard.check(7.0) is not None  # mean(2.5, 2.0... ) = (2.0 + 2.5 + 7.0) / 3 > 3 * 1.0

    def test_small_losses_wobbling_are_not_divergence(self) -> None:
        guard = DivergenceGuard(window=3)
        assert [guard.check(v) for v in (0.01, 0.01, 0.01, 0.05, 0.06, 0.05)] == [None] * 6

    def test_non_finite_is_divergence_at_once(self) -> None:
        assert DivergenceGuard().check(math.inf) is not None
        assert DivergenceGuard().check(math.nan) is not None
