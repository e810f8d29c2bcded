"""The "auto" hyperparameter search (``grft_core.method.autotune``) on a tiny CNN and 16-px images:
deterministic under a seed, within its step budget, away from a rate that diverges, cancellable, and
recorded for the callbacks."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from grft_core.cancel import stop_checks
from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import TrainingInterrupted
from grft_core.method import autotune
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.setup import compute_selection
from grft_core.method.trainer import fit
from tests.conftest import make_images

# Five epochs of 8 steps: a 12-step budget, room for five rates at two steps each.
CONFIG = GRFTConfig(
    k=2, epochs=5, batch_size=8, image_size=16, selection_samples=16, selection_batch_size=8, device="cpu"
)


@pytest.fixture(scope="module")
def task(registry: Any) -> dict[str, Any]:
    """tiny-cnn (random init) with its selection, 64 training and 24 validation images of 2 classes."""
    items, labels = make_images(88, 2, size=16)
    model, spec = registry.load("tiny-cnn", num_labels=2, seed=0)
    pre = make_preprocessor(spec, image_size=16)
    cpu = torch.device("cpu")
    train = BatchSource(items[:64], labels[:64], pre, cpu)
    val = BatchSource(items[64:], labels[64:], pre, cpu)
    selection = compute_selection(model, train, CONFIG)
    return {"model": model, "train": train, "val": val, "selection": selection, "pre": pre,
            "items": items, "labels": labels}  # fmt: skip


def search(task: dict[str, Any], config: GRFTConfig, **kwargs: Any) -> tuple[GRFTConfig, dict[str, Any]]:
    return autotune.resolve(task["model"], task["train"], task["val"], task["selection"], config, **kwargs)


class Counting:
    """Counts every optimizer step the search takes, independently of its own bookkeeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps = 0
        build = autotune.build_optimizer

        def counted(model: Any, config: GRFTConfig) -> torch.optim.Adam:
            optimizer = build(model, config)
            optimizer.register_step_post_hook(lambda *_: self.add())
            return optimizer

        monkeypatch.setattr(autotune, "build_optimizer", counted)

    def add(self) -> None:
        self.steps += 1


class TestRules:
    @pytest.mark.parametrize(
        ("items", "epochs"), [(10, 20), (100, 20), (400, 5), (1000, 3), (16_000, 3), (40_000, 1), (10**7, 1)]
    )
    def test_epochs_fall_as_the_dataset_grows(self, items: int, epochs: int) -> None:
        assert autotune.auto_epochs(items) == epochs

    @pytest.mark.parametrize(("items", "size"), [(5, 5), (100, 8), (1000, 16), (3000, 64), (10**6, 64)])
    def test_batch_size_follows_the_dataset_within_bounds(self, items: int, size: int) -> None:
        assert autotune.auto_batch_size(items) == size

    def test_the_grid_spans_a_decade_each_side_of_the_method_rate(self) -> None:
        assert autotune.lr_grid("grft") == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]
        assert autotune.lr_grid("full") == [1e-5, 3.16e-5, 1e-4, 3.16e-4, 1e-3]

    @pytest.mark.parametrize("budget", [0, 3, 4, 5, 10, 11, 18, 19, 40, 10_000])
    def test_a_plan_never_exceeds_its_budget(self, budget: int) -> None:
        rungs = autotune.plan(5, budget, epoch_steps=1000)
        assert sum(r.candidates * r.steps for r in rungs) <= budget
        # Every candidate trains at least two steps: one step ranks rates by how far they moved.
        assert (rungs == []) == (budget < 5 * autotune.MIN_FIRST_RUNG_STEPS)
        assert all(r.steps >= autotune.MIN_FIRST_RUNG_STEPS for r in rungs)
        assert all(b.steps == 2 * a.steps for a, b in zip(rungs, rungs[1:], strict=False))


class TestSearch:
    def test_deterministic_under_the_seed_and_leaves_the_rng_alone(self, task: dict[str, Any]) -> None:
        config = CONFIG.replace(auto=["lr"])
        torch.manual_seed(123)
        before = torch.get_rng_state()
        first_config, first = search(task, config)
        assert torch.equal(torch.get_rng_state(), before)  # training after the search draws the same numbers
        second_config, second = search(task, config)
        # Everything but the search's wall time is a function of the seed.
        assert first["trials"]
        assert first.pop("seconds") > 0
        assert second.pop("seconds") > 0
        assert first == second
        assert first_config == second_config
        assert first_config.auto == []
        assert first_config.lr == first["chosen"]["lr"] in autotune.lr_grid("grft")
        other_config, other = search(task, config.replace(seed=1))
        assert [t["valid_loss"] for t in other["trials"]] != [t["valid_loss"] for t in first["trials"]]

    def test_stays_within_thirty_percent_of_the_training_steps(
        self, task: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        counter = Counting(monkeypatch)
        config = CONFIG.replace(auto=["lr"], epochs=5)
        _, record = search(task, config)
        training_steps = 5 * 8  # 64 items in batches of 8, five epochs
        assert record["budget_steps"] == int(0.3 * training_steps) == 12
        assert counter.steps == record["used_steps"] <= record["budget_steps"]
        assert counter.steps == sum(t["steps"] for t in record["trials"]) > 0

    def test_too_small_a_budget_keeps_the_usual_rate(self, task: dict[str, Any]) -> None:
        config = CONFIG.replace(auto=["lr"], epochs=1)  # 8 steps: 2 for the search, fewer than 5 rates
        tuned, record = search(task, config)
        assert record["trials"] == []
        assert tuned.lr == 1e-3
        assert "too few to search" in record["reasons"]["lr"]

    def test_avoids_a_rate_that_diverges(self, task: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        # Centred on 1, the grid's top rate (10) moves every weight by about 10 per Adam step.
        monkeypatch.setitem(autotune.LR_CENTER, "grft", 1.0)
        config = CONFIG.replace(auto=["lr"], epochs=10, l2_lambda=0.0)
        tuned, record = search(task, config)
        first_rung = {t["lr"]: t["valid_loss"] for t in record["trials"] if t["rung"] == 1}
        assert set(first_rung) == {0.1, 0.316, 1.0, 3.16, 10.0}
        assert tuned.lr != 10.0
        top = first_rung[10.0]
        assert not math.isfinite(top) or top > 3 * min(first_rung.values())
        assert record["chosen"]["lr"] == tuned.lr

    def test_epochs_and_batch_size_chosen_first(self, task: dict[str, Any]) -> None:
        tuned, record = search(task, CONFIG.replace(auto=["epochs", "batch_size"]))
        assert (tuned.epochs, tuned.batch_size) == (20, 8)  # 64 examples: 20 epochs, batches of 8
        assert record["trials"] == []
        assert set(record["reasons"]) == {"epochs", "batch_size"}
        assert tuned.lr == CONFIG.lr  # not on auto: untouched

    def test_a_stop_request_ends_the_search(self, task: dict[str, Any]) -> None:
        calls = {"n": 0}

        def should_stop() -> bool:
            calls["n"] += 1
            return calls["n"] > 5

        with stop_checks(should_stop), pytest.raises(TrainingInterrupted):
            search(task, CONFIG.replace(auto=["lr"], epochs=5))

    def test_callbacks_hear_what_was_tried_chosen_and_why(self, task: dict[str, Any]) -> None:
        heard: list[dict[str, Any]] = []
        progress: list[tuple[int, int]] = []

        class Listener:
            def on_autotune(self, record: dict[str, Any]) -> None:
                heard.append(record)

        _, record = search(
            task,
            CONFIG.replace(auto=["lr"], epochs=10),
            callbacks=[Listener()],
            on_progress=lambda done, total: progress.append((done, total)),
        )
        assert heard == [record]
        # A 24-step budget: five rates for two steps, then the best three for four (10 + 12 steps).
        assert [(t["rung"], t["steps"]) for t in record["trials"]] == [(1, 2)] * 5 + [(2, 4)] * 3
        first = sorted((t["valid_loss"], t["lr"]) for t in record["trials"] if t["rung"] == 1)
        assert [t["lr"] for t in record["trials"] if t["rung"] == 2] == [lr for _, lr in first[:3]]
        assert "lowest validation loss" in record["reasons"]["lr"]
        assert progress[-1][0] == record["used_steps"]
        assert [p[0] for p in progress] == list(range(1, record["used_steps"] + 1))


class TestFit:
    def test_fit_trains_with_the_chosen_values_and_reports_them(
        self, task: dict[str, Any], tmp_path: Any
    ) -> None:
        model = copy.deepcopy(task["model"])
        items, labels = task["items"], task["labels"]
        config = CONFIG.replace(auto=["lr"], epochs=5, checkpoint_every=20)
        result = fit(model, items[:64], labels[:64], items[64:], labels[64:], task["pre"], config,
                     checkpoint_dir=tmp_path, selection=task["selection"])  # fmt: skip
        assert result.autotune is not None
        assert result.config is not None
        assert result.config.lr == result.autotune["chosen"]["lr"]
        assert (tmp_path / "autotune.json").exists()
        # A run resumed from that folder reuses the choice instead of searching again.
        again = fit(copy.deepcopy(task["model"]), items[:64], labels[:64], items[64:], labels[64:],
                    task["pre"], config, checkpoint_dir=tmp_path, selection=task["selection"])  # fmt: skip
        assert again.autotune == result.autotune
