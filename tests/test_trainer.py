"""The trainer: resume reproduces an uninterrupted run, seeds make runs repeatable, every method runs."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import TrainingInterrupted
from grft_core.method.checkpoint import list_checkpoints
from grft_core.method.config import GRFTConfig
from grft_core.method.trainer import fit, lr_factor
from tests.conftest import make_images, make_texts


class CrashAt:
    """Raises out of the loop at a given step, as a killed worker would stop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, info) -> None:
        if info.step == self.step:
            raise TrainingInterrupted("simulated crash")


class Recorder:
    def __init__(self) -> None:
        self.steps, self.epochs, self.checkpoints, self.selections = [], [], [], []

    def on_step(self, info) -> None:
        self.steps.append(info)

    def on_epoch(self, m) -> None:
        self.epochs.append(m)

    def on_checkpoint(self, step, path) -> None:
        self.checkpoints.append((step, path))

    def on_selection(self, selection) -> None:
        self.selections.append(selection)


@pytest.fixture(scope="module")
def bert_setup(registry):
    items, labels = make_texts(40, 3)
    model, spec = registry.load("tiny-bert", num_labels=3, seed=0)
    return model, make_preprocessor(spec, max_length=16), items, labels


@pytest.fixture(scope="module")
def vit_setup(registry):
    items, labels = make_images(40, 2, size=32)
    model, spec = registry.load("tiny-vit", num_labels=2, seed=0)
    return model, make_preprocessor(spec, image_size=32), items, labels


def _run(setup, config, **kwargs):
    model, pre, items, labels = setup
    model = copy.deepcopy(model)
    result = fit(model, items, labels, items[:10], labels[:10], pre, config, **kwargs)
    return model, result


CONFIG = GRFTConfig(k=2, epochs=3, batch_size=8, lr=5e-3, selection_samples=16, selection_batch_size=8)


class TestResume:
    def test_resumed_run_reproduces_uninterrupted_losses(self, bert_setup, tmp_path):
        # tiny-bert has dropout, so this also checks that the RNG state is restored.
        config = CONFIG.replace(checkpoint_every=2)
        _, full = _run(bert_setup, config)
        ckpt = tmp_path / "ckpt"
        with pytest.raises(TrainingInterrupted):
            _run(bert_setup, config, checkpoint_dir=ckpt, callbacks=[CrashAt(8)])
        assert [int(p.name.split("-")[1]) for p in list_checkpoints(ckpt)] == [5, 6]
        rec = Recorder()
        model, resumed = _run(bert_setup, config, checkpoint_dir=ckpt, callbacks=[rec])
        assert rec.selections == []  # the saved selection is reused, not recomputed
        assert rec.steps[0].step == 7
        assert resumed.steps == full.steps == 15
        torch.testing.assert_close(resumed.losses, full.losses[6:])
        assert [h.val_accuracy for h in resumed.history] == [h.val_accuracy for h in full.history]
        assert resumed.best_epoch == full.best_epoch

    def test_resume_after_epoch_boundary(self, vit_setup, tmp_path):
        _, full = _run(vit_setup, CONFIG)
        ckpt = tmp_path / "ckpt"
        with pytest.raises(TrainingInterrupted):
            _run(vit_setup, CONFIG, checkpoint_dir=ckpt, callbacks=[CrashAt(7)])  # epoch checkpoints only
        _, resumed = _run(vit_setup, CONFIG, checkpoint_dir=ckpt)
        torch.testing.assert_close(resumed.losses, full.losses[5:])


class TestDeterminism:
    def test_same_seed_same_run(self, bert_setup):
        m1, r1 = _run(bert_setup, CONFIG)
        m2, r2 = _run(bert_setup, CONFIG)
        assert r1.losses == r2.losses
        for (n, p), q in zip(m1.named_parameters(), m2.parameters(), strict=True):
            assert torch.equal(p, q), n

    def test_other_seed_other_run(self, bert_setup):
        _, r1 = _run(bert_setup, CONFIG)
        _, r2 = _run(bert_setup, CONFIG.replace(seed=1))
        assert r1.losses != r2.losses


def test_gradient_accumulation_matches_a_bigger_batch(vit_setup):
    # ViT without dropout and with frozen norms: two half batches average to the full batch's gradient.
    # Biases off: the attention key bias has a zero true gradient, which Adam turns into rounding noise.
    cfg = CONFIG.replace(epochs=1, max_grad_norm=0.0, l2_lambda=0.0, train_bias=False)
    m_big, big = _run(vit_setup, cfg.replace(batch_size=8))
    m_acc, accumulated = _run(vit_setup, cfg.replace(batch_size=4, grad_accum_steps=2))
    assert big.steps == accumulated.steps == 5
    for (name, p), q in zip(m_big.named_parameters(), m_acc.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=5e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_progress_callback_reports_steps_epochs_and_checkpoints(vit_setup, tmp_path):
    rec = Recorder()
    _, result = _run(vit_setup, CONFIG.replace(epochs=2), callbacks=[rec], checkpoint_dir=tmp_path)
    assert [s.step for s in rec.steps] == list(range(1, 11))
    assert all(s.total_steps == 10 and s.samples_per_s > 0 and s.eta_s >= 0 for s in rec.steps)
    assert rec.steps[-1].eta_s == 0
    assert [e.epoch for e in rec.epochs] == [1, 2]  # epochs count from 1 wherever they are reported
    assert [s.epoch for s in rec.steps] == [1] * 5 + [2] * 5
    assert [c[0] for c in rec.checkpoints] == [5, 10]
    assert len(rec.selections) == 1
    assert 0.0 <= result.initial_val_accuracy <= 1.0


def test_model_ends_with_best_epoch_weights(vit_setup):
    model, result = _run(vit_setup, CONFIG.replace(epochs=3, lr=5e-2))
    best = result.history[result.best_epoch - 1]  # best_epoch counts from 1
    assert result.best_val_accuracy == best.val_accuracy == max(h.val_accuracy for h in result.history)


class TestMethods:
    @pytest.mark.parametrize("method", ["grft", "masked_dense", "full", "linear_probe", "lora"])
    def test_every_method_trains(self, vit_setup, method):
        model, result = _run(vit_setup, CONFIG.replace(method=method, epochs=1))
        assert result.steps == 5
        assert all(math.isfinite(x) for x in result.losses)
        assert 0 < result.trainable_params <= result.total_params

    def test_trainable_counts(self, vit_setup):
        counts = {
            m: _run(vit_setup, CONFIG.replace(method=m, epochs=1))[1].trainable_params
            for m in ("grft", "full", "linear_probe", "lora")
        }
        assert counts["linear_probe"] < counts["grft"] < counts["lora"] < counts["full"]
        assert counts["linear_probe"] == 64 * 2 + 2

    def test_grft_optimizer_holds_only_selected_entries(self, vit_setup):
        model, pre, items, labels = vit_setup
        model = copy.deepcopy(model)
        fit(model, items, labels, items[:4], labels[:4], pre, CONFIG.replace(epochs=1))
        big = max(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".grft_delta" in n)
        assert big <= 2 * 256  # k=2 rows of the widest input (fc2: 128 in) or columns of 256-wide outputs


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [lr_factor(s, 100, 10) for s in range(101)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert values[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))
