"""The exactness contract: training deltas equals the paper's masked-dense update of whole matrices.

N Adam steps (with the L2 term, clipping and the LR schedule) on GRFT deltas must give, once merged,
the same weights as training the full selected matrices with their gradients multiplied by the mask.
"""

from __future__ import annotations

import copy

import pytest
import torch

from grft_core.data.preprocess import make_preprocessor
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.model import HEAD, grft_layers, merge_all
from grft_core.method.setup import compute_selection
from grft_core.method.trainer import fit
from tests.conftest import make_images, make_texts

# Adam divides by sqrt(v) + 1e-8, so entries whose true gradient is zero (the attention key bias:
# softmax ignores a per-query constant) get updates made of fp32 rounding noise, up to ~1% of one
# step (lr = 5e-3). A real error moves whole rows by about lr, 100x above this tolerance.
ATOL = 5e-5
TABLE = [
    # model, axis, include_depthwise
    ("tiny-vit", "rows", False),
    ("tiny-vit", "columns", False),
    ("tiny-cnn", "rows", True),
    ("tiny-cnn", "columns", True),
    ("tiny-bert", "rows", False),
    ("tiny-bert", "columns", False),
]


def _data(name: str):
    if name == "tiny-bert":
        return make_texts(24, 3)
    return make_images(24, 3, size=32)


def _weights_by_base_name(model) -> dict[str, torch.Tensor]:
    return {
        n.replace(".base_layer.", "."): p.detach() for n, p in model.named_parameters() if ".grft_" not in n
    }


@pytest.mark.parametrize(("name", "axis", "depthwise"), TABLE, ids=[f"{t[0]}-{t[1]}" for t in TABLE])
def test_grft_equals_masked_dense(registry, name, axis, depthwise):
    items, labels = _data(name)
    base, spec = registry.load(name, num_labels=3, seed=0)
    pre = make_preprocessor(spec, image_size=32 if spec.modality == "image" else None, max_length=16)
    config = GRFTConfig(
        k=2,
        axis=axis,
        epochs=1,
        batch_size=8,
        lr=5e-3,
        l2_lambda=1e-2,
        max_grad_norm=0.5,
        include_depthwise=depthwise,
        selection_samples=16,
        selection_batch_size=8,
        warmup_ratio=0.34,
    )
    selection = compute_selection(
        copy.deepcopy(base), BatchSource(items, labels, pre, torch.device("cpu")), config
    )
    assert any("conv" in n or "patch_embed" in n for n in selection.indices) or name == "tiny-bert"

    grft_model, dense_model = copy.deepcopy(base), copy.deepcopy(base)
    r1 = fit(
        grft_model,
        items,
        labels,
        items[:6],
        labels[:6],
        pre,
        config,
        selection=selection,
        evaluate_initial=False,
    )
    r2 = fit(
        dense_model,
        items,
        labels,
        items[:6],
        labels[:6],
        pre,
        config.replace(method="masked_dense"),
        selection=selection,
        evaluate_initial=False,
    )
    assert r1.steps == r2.steps == 3
    torch.testing.assert_close(r1.losses, r2.losses, rtol=1e-5, atol=1e-6)

    merge_all(grft_model)
    got, want = _weights_by_base_name(grft_model), _weights_by_base_name(dense_model)
    assert got.keys() == want.keys()
    moved = 0
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=ATOL, msg=lambda m, k=key: f"{k}: {m}")
        moved += int(not torch.equal(value, dict(base.named_parameters())[key].detach()))
    assert moved > len(selection.indices)  # deltas, biases and the head all moved


def test_unselected_entries_never_move(registry):
    items, labels = make_images(16, 2, size=32)
    model, spec = registry.load("tiny-vit", num_labels=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pre = make_preprocessor(spec, image_size=32)
    config = GRFTConfig(k=1, epochs=1, batch_size=8, lr=1e-2, selection_samples=8, selection_batch_size=8)
    result = fit(model, items, labels, items[:4], labels[:4], pre, config, evaluate_initial=False)
    layers = grft_layers(model)
    assert set(layers) == set(result.selection.indices)
    for name, p in model.named_parameters():
        if ".grft_" in name or name.startswith(HEAD + "."):
            continue
        assert torch.equal(p, before[name.replace(".base_layer.", ".")]), name
    merge_all(model)
    for name, layer in layers.items():
        w = layer.base_layer.weight.detach().reshape(layer.base_layer.weight.shape[0], -1)
        w0 = before[f"{name}.weight"].reshape(w.shape)
        changed_rows = (w != w0).any(1).nonzero().flatten()
        assert set(changed_rows.tolist()) <= set(layer.grft_indices.tolist())
