"""The L2 term: λ Σ‖delta‖² on GRFT deltas equals λ Σ‖W − W_pre‖² computed densely, over the set R."""

from __future__ import annotations

import copy

import pytest
import torch

from grft_core.data.preprocess import make_preprocessor
from grft_core.method.config import GRFTConfig
from grft_core.method.model import (
    HEAD,
    block_key,
    dense_l2,
    eligible_modules,
    grft_l2,
    grft_layers,
    head_l2,
    l2_module_names,
    merge_all,
)
from grft_core.method.selection import Selection
from grft_core.method.setup import prepare
from grft_core.method.trainer import fit
from tests.conftest import make_images


@pytest.mark.parametrize("l2_layers", [None, 1, 0])
@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_delta_norm_equals_dense_distance_after_training(registry, axis, l2_layers):
    items, labels = make_images(16, 2, size=32)
    base, spec = registry.load("tiny-vit", num_labels=2)
    pre_weights = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = copy.deepcopy(base)
    config = GRFTConfig(
        k=3, axis=axis, epochs=1, batch_size=8, lr=1e-2, l2_lambda=1e-3, l2_layers=l2_layers,
        selection_samples=8, selection_batch_size=8,
    )  # fmt: skip
    fit(model, items, labels, items[:4], labels[:4], make_preprocessor(spec, image_size=32), config)
    names = l2_module_names(grft_layers(model), l2_layers)
    sparse = grft_l2(model, names).detach()
    merge_all(model)
    dense = sum(
        (grft_layers(model)[n].base_layer.weight.detach() - pre_weights[f"{n}.weight"]).pow(2).sum()
        for n in names
    )
    assert float(sparse) > 0 or not names
    torch.testing.assert_close(sparse, torch.as_tensor(dense, dtype=sparse.dtype), rtol=1e-5, atol=1e-10)


def test_regularizer_matches_dense_formula_term_by_term(registry):
    model, _ = registry.load("tiny-vit", num_labels=2)
    names = list(eligible_modules(model))
    selection = Selection("rows", {n: torch.tensor([0, 2]) for n in names})
    dense_model = copy.deepcopy(model)
    pre = {n: dense_model.get_submodule(n).weight.detach().clone() for n in names}
    grft = prepare(model, GRFTConfig(l2_layers=None), selection)
    masked = prepare(dense_model, GRFTConfig(method="masked_dense", l2_layers=None), selection)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, layer in grft_layers(model).items():
            layer.grft_delta.copy_(torch.randn(layer.grft_delta.shape, generator=g))
            weight = dense_model.get_submodule(n).weight
            weight.view(weight.shape[0], -1)[[0, 2]] += layer.grft_delta
        getattr(model, HEAD).weight.add_(1.0)
        getattr(dense_model, HEAD).weight.add_(1.0)
    torch.testing.assert_close(grft.regularizer(), masked.regularizer())
    torch.testing.assert_close(
        grft.regularizer(), dense_l2(dense_model, pre) + head_l2(dense_model, grft.head_init)
    )


class TestL2Set:
    NAMES = [
        "backbone.patch_embed.proj",
        "backbone.blocks.0.attn.qkv",
        "backbone.blocks.0.mlp.fc1",
        "backbone.blocks.1.attn.qkv",
        "backbone.blocks.1.mlp.fc2",
    ]

    def test_all_by_default(self):
        assert l2_module_names(self.NAMES, None) == set(self.NAMES)

    def test_last_block_plus_modules_outside_blocks(self):
        assert l2_module_names(self.NAMES, 1) == {
            "backbone.patch_embed.proj", "backbone.blocks.1.attn.qkv", "backbone.blocks.1.mlp.fc2",
        }  # fmt: skip

    def test_zero_keeps_only_the_patch_embedding(self):
        assert l2_module_names(self.NAMES, 0) == {"backbone.patch_embed.proj"}

    def test_block_keys_of_nested_cnn_stages(self):
        assert block_key("backbone.blocks.3.1.conv_pw") == "backbone.blocks.3.1"
        assert block_key("backbone.encoder.layer.5.output.dense") == "backbone.encoder.layer.5"
        assert block_key("backbone.conv_head") is None
