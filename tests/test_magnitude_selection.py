"""The weight-magnitude ablation: the k rows (columns) of largest pre-trained norm, no data read."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grft_core.adapters.format import load_adapter
from grft_core.method.config import GRFTConfig
from grft_core.method.layers import module_weight, weight_matrix_shape
from grft_core.method.model import eligible_modules
from grft_core.method.setup import compute_selection
from grft_core.pipeline import train_to_folder
from tests.test_random_selection import _NoData


@pytest.fixture(scope="module")
def cnn(registry):
    model, _ = registry.load("tiny-cnn", num_labels=2, seed=0)
    return model


@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_picks_largest_norms_without_reading_data(cnn, axis):
    sel = compute_selection(cnn, _NoData(8), GRFTConfig(selection_strategy="magnitude", k=2, axis=axis))
    assert sel.meta["selection_strategy"] == "magnitude"
    modules = eligible_modules(cnn)
    assert set(sel.indices) == set(modules)
    for name, module in modules.items():
        out, _ = weight_matrix_shape(module)
        matrix = module_weight(module).detach().reshape(out, -1)
        norms = matrix.norm(dim=1 if axis == "rows" else 0)
        expected = torch.sort(torch.topk(norms, 2).indices).values
        assert torch.equal(sel.indices[name].cpu().long(), expected)


def test_a_scaled_row_is_chosen():
    # A row made ten times larger than any other must be among the chosen ones, wherever it sits.
    model = nn.Sequential(nn.Linear(6, 5))
    model.features = model  # type: ignore[attr-defined]  # the pass never runs; eligibility needs a Linear
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[0].weight[3] *= 10
    sel = compute_selection(model, _NoData(4), GRFTConfig(selection_strategy="magnitude", k=1))
    assert [int(i) for i in next(iter(sel.indices.values()))] == [3]


def test_trains_through_the_pipeline(tmp_path, registry):
    from grft_core.data.samples import digits_image_folder

    data = digits_image_folder(tmp_path / "data", size=16, limit_per_class=4)
    config = GRFTConfig(selection_strategy="magnitude", k=1, epochs=1, batch_size=8, image_size=16)
    train_to_folder("tiny-cnn", str(data), tmp_path / "out", config, registry=registry)
    adapter = load_adapter(tmp_path / "out")
    assert adapter.config["config"]["selection_strategy"] == "magnitude"
