"""The GPS-style baseline: per-row entry selection, masked training, the trainer and the adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from grft_core.adapters.format import adapter_tensors, apply_adapter, load_adapter, save_adapter
from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import ConfigError
from grft_core.method.config import GRFTConfig
from grft_core.method.gps import (
    apply_gps,
    entry_masks,
    is_gps_selection,
    score_entries,
    select_per_row,
)
from grft_core.method.model import HEAD, dense_l2
from grft_core.method.selection import Selection
from grft_core.method.trainer import fit
from tests.conftest import make_images


class TwoLayer(nn.Module):
    """A backbone of two Linear layers and the head, enough for the eligible-matrix machinery."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
        setattr(self, HEAD, nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = getattr(self, HEAD)(self.backbone(x))
        return out


class TestSelectPerRow:
    @pytest.mark.parametrize("per_row", [1, 2, 5, 6])
    def test_mask_has_exactly_k_entries_per_row(self, per_row):
        model = TwoLayer()
        g = torch.Generator().manual_seed(1)
        scores = {"backbone.0": torch.rand(5, 6, generator=g), "backbone.2": torch.rand(4, 5, generator=g)}
        selection = select_per_row(scores, per_row)
        masks = entry_masks(model, selection.indices)
        for name, mask in masks.items():
            k = min(per_row, scores[name].shape[1])
            assert mask.shape == model.get_submodule(name).weight.shape
            assert mask.sum(1).tolist() == [k] * mask.shape[0]
            assert selection.indices[name].shape == (mask.shape[0], k)
        assert is_gps_selection(selection)

    def test_ties_break_toward_lower_columns(self):
        selection = select_per_row({"m": torch.tensor([[1.0, 2.0, 2.0, 2.0]])}, 2)
        assert selection.indices["m"].tolist() == [[1, 2]]

    def test_rejects_non_positive_k(self):
        with pytest.raises(ConfigError, match="gps_per_row"):
            select_per_row({"m": torch.ones(2, 2)}, 0)

    def test_round_trips_through_selection_files(self, tmp_path):
        selection = select_per_row({"m": torch.rand(3, 4)}, 2, {"samples": 8})
        selection.save(tmp_path)
        loaded = Selection.load(tmp_path)
        assert is_gps_selection(loaded)
        assert torch.equal(loaded.indices["m"], selection.indices["m"])


class TestScoreEntries:
    def test_chosen_entries_have_the_largest_gradients(self):
        # Loss ½‖Wx − y‖² at W = 0 has gradient −y xᵀ: |G_ij| = |y_i|·|x_j|, so in every row the
        # largest entries are at the columns of the largest |x_j|, here columns 1 (−5) and 3 (2).
        layer = nn.Linear(4, 3, bias=False)
        nn.init.zeros_(layer.weight)
        x = torch.tensor([1.0, -5.0, 0.5, 2.0])
        y = torch.tensor([1.0, -2.0, 3.0])

        def loss_fn(_: object) -> torch.Tensor:
            return 0.5 * (layer(x) - y).pow(2).sum()

        scores = score_entries(layer, {"layer": layer}, [0, 1], loss_fn)
        # Accumulated over two identical batches: (2·y xᵀ)².
        torch.testing.assert_close(scores["layer"], (2 * torch.outer(y, x)).pow(2))
        assert select_per_row(scores, 2).indices["layer"].tolist() == [[1, 3]] * 3
        assert layer.weight.grad is None

    def test_accumulated_cancels_where_per_batch_does_not(self):
        layer = nn.Linear(2, 1, bias=False)
        nn.init.zeros_(layer.weight)
        signs = [1.0, -1.0]

        def loss_fn(i: int) -> torch.Tensor:
            return signs[i] * layer(torch.tensor([1.0, 3.0])).sum()

        acc = score_entries(layer, {"l": layer}, [0, 1], loss_fn)
        fisher = score_entries(layer, {"l": layer}, [0, 1], loss_fn, score_mode="per_batch")
        assert torch.equal(acc["l"], torch.zeros(1, 2))
        torch.testing.assert_close(fisher["l"], torch.tensor([[2.0, 18.0]]))

    def test_empty_pass_is_an_error(self):
        layer = nn.Linear(2, 2)
        with pytest.raises(ConfigError, match="no batches"):
            score_entries(layer, {"l": layer}, [], lambda b: layer.weight.sum())


def test_entries_outside_the_mask_never_change():
    model = TwoLayer()
    pre = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(2)
    scores = {"backbone.0": torch.rand(5, 6, generator=g), "backbone.2": torch.rand(4, 5, generator=g)}
    masks = apply_gps(model, select_per_row(scores, 2).indices)
    anchors = {n: model.get_submodule(n).weight.detach().clone() for n in masks}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + 0.1 * dense_l2(model, anchors)
        loss.backward()
        optimizer.step()
    for name, mask in masks.items():
        w, w0 = model.get_submodule(name).weight.detach(), pre[f"{name}.weight"]
        assert torch.equal(w[~mask], w0[~mask]), name
        assert not torch.equal(w[mask], w0[mask]), name


@pytest.fixture(scope="module")
def vit_setup(registry):
    items, labels = make_images(32, 2, size=32)
    model, spec = registry.load("tiny-vit", num_labels=2, seed=0)
    return model, make_preprocessor(spec, image_size=32), items, labels


def test_fit_trains_only_the_chosen_entries_and_the_adapter_reproduces_it(vit_setup, tmp_path):
    base, pre, items, labels = vit_setup
    model = copy.deepcopy(base)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    config = GRFTConfig(
        method="gps",
        gps_per_row=3,
        epochs=2,
        batch_size=8,
        lr=5e-3,
        selection_samples=16,
        selection_batch_size=8,
    )
    result = fit(model, items, labels, items[:8], labels[:8], pre, config, evaluate_initial=False)
    selection = result.selection
    assert selection is not None
    assert is_gps_selection(selection)
    assert result.steps == 8
    weights_trained = 0
    for name, idx in selection.indices.items():
        w = model.get_submodule(name).weight.detach()
        assert idx.shape == (w.shape[0], 3)
        mask = entry_masks(model, {name: idx})[name]
        w0 = base_state[f"{name}.weight"]
        assert torch.equal(w[~mask], w0[~mask]), name
        weights_trained += int(mask.sum())
    assert weights_trained < result.trainable_params < result.total_params

    tensors = adapter_tensors(model, "gps", base_state, selection.indices)
    assert not any(".grft_" in k for k in tensors)
    config = {"method": "gps", "base_model": "tiny-vit", "labels": ["a", "b"]}
    folder = save_adapter(tmp_path / "adapter", tensors, config, fp16=False)
    fresh = copy.deepcopy(base)
    apply_adapter(fresh, load_adapter(folder), check_fingerprint=False)
    model.eval()
    x = pre(items[:4])
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)
