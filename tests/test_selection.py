"""Selection: scores are squared gradients of the selection loss, top-k per matrix, reusable."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import ConfigError
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.model import eligible_modules
from grft_core.method.selection import Selection, scl_loss, score_modules, select_top_k
from grft_core.method.setup import compute_selection
from tests.conftest import make_images


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
        self.task_head = nn.Linear(4, 3)

    def features(self, batch):
        return self.backbone(batch["x"])

    def forward(self, batch):
        return self.task_head(self.features(batch))


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 5, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


class TestScoreModules:
    @pytest.mark.parametrize("axis", ["rows", "columns"])
    @pytest.mark.parametrize("mode", ["accumulated", "per_batch"])
    def test_scores_are_squared_gradient_sums(self, axis, mode):
        net = TinyNet()
        batches = _batches()
        mods = eligible_modules(net)
        assert list(mods) == ["backbone.0", "backbone.2"]

        def loss_fn(b):
            return nn.functional.cross_entropy(net({"x": b[0]}), b[1])

        scores = score_modules(net, mods, batches, loss_fn, axis=axis, score_mode=mode)
        ref = copy.deepcopy(net)
        dim = 1 if axis == "rows" else 0
        for name in mods:
            w = ref.get_submodule(name).weight
            grads = []
            for x, y in batches:
                g = torch.autograd.grad(nn.functional.cross_entropy(ref({"x": x}), y), w)[0]
                grads.append(g)
            if mode == "accumulated":
                expected = torch.stack(grads).sum(0).pow(2).sum(dim)
            else:
                expected = torch.stack([g.pow(2).sum(dim) for g in grads]).sum(0)
            torch.testing.assert_close(scores[name], expected)

    def test_leaves_no_gradients_and_restores_flags(self):
        net = TinyNet()
        net.task_head.weight.requires_grad_(False)
        score_modules(net, eligible_modules(net), _batches(), lambda b: net({"x": b[0]}).sum(), axis="rows")
        assert all(p.grad is None for p in net.parameters())
        assert not net.task_head.weight.requires_grad
        assert net.backbone[0].weight.requires_grad

    def test_no_batches_is_an_error(self):
        net = TinyNet()
        with pytest.raises(ConfigError, match="no batches"):
            score_modules(net, eligible_modules(net), [], lambda b: b, axis="rows")


class TestSelectTopK:
    SCORES = {"a": torch.tensor([0.1, 5.0, 3.0, 5.0]), "b": torch.tensor([1.0, 2.0])}
    SHAPES = {"a": (4, 3), "b": (2, 7)}

    def test_top_k_sorted_with_ties_to_lower_index(self):
        sel = select_top_k(self.SCORES, lambda n: 2, "rows", self.SHAPES)
        assert sel.indices["a"].tolist() == [1, 3]
        assert sel.indices["b"].tolist() == [0, 1]

    def test_k_is_capped_per_matrix(self):
        sel = select_top_k(self.SCORES, lambda n: 3, "rows", self.SHAPES)
        assert sel.indices["b"].numel() == 2
        assert sel.indices["a"].tolist() == [1, 2, 3]

    def test_k_larger_than_every_matrix_is_rejected(self):
        with pytest.raises(ConfigError, match="larger than every") as err:
            select_top_k(self.SCORES, lambda n: 9, "rows", self.SHAPES)
        assert err.value.param == "k"

    def test_per_module_map_via_config(self):
        config = GRFTConfig(k={"a": 1})
        sel = select_top_k(self.SCORES, config.k_for, "rows", self.SHAPES)
        assert list(sel.indices) == ["a"]
        assert sel.indices["a"].tolist() == [1]


class TestSelectionObject:
    def test_save_load_round_trip(self, tmp_path):
        sel = select_top_k(
            TestSelectTopK.SCORES, lambda n: 1, "columns", TestSelectTopK.SHAPES, {"samples": 4}
        )
        sel.save(tmp_path)
        back = Selection.load(tmp_path)
        assert back.axis == "columns"
        assert back.meta == {"samples": 4}
        assert back.shapes == sel.shapes
        for name in sel.indices:
            assert torch.equal(back.indices[name], sel.indices[name])
            torch.testing.assert_close(back.scores[name], sel.scores[name])

    def test_histogram_and_summary(self):
        sel = select_top_k(TestSelectTopK.SCORES, lambda n: 1, "rows", TestSelectTopK.SHAPES)
        hist = sel.histogram("a", bins=4)
        assert sum(hist["counts"]) == 4
        assert len(hist["edges"]) == 5
        summary = {row["module"]: row for row in sel.summary()}
        assert summary["a"]["indices"] == [1]
        assert summary["a"]["score_share"] == pytest.approx(5.0 / 13.1)


class TestSCLLoss:
    def test_matches_a_direct_implementation(self):
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
        y = torch.tensor([0, 0, 1, 1, 2, 0])
        z = nn.functional.normalize(torch.cat([a, b]), dim=1)
        labels = torch.cat([y, y])
        total, anchors = 0.0, 0
        for i in range(12):
            denom = sum(torch.exp(z[i] @ z[j] / 0.07) for j in range(12) if j != i)
            pos = [j for j in range(12) if j != i and labels[j] == labels[i]]
            total += -sum(torch.log(torch.exp(z[i] @ z[p] / 0.07) / denom) for p in pos) / len(pos)
            anchors += 1
        torch.testing.assert_close(scl_loss(a, b, y, 0.07), total / anchors)

    def test_class_clustered_features_score_lower_than_random(self):
        g = torch.Generator().manual_seed(0)
        y = torch.arange(8) % 2
        centroids = torch.randn(2, 16, generator=g) * 3
        clustered = centroids[y] + 0.1 * torch.randn(8, 16, generator=g)
        clustered_b = centroids[y] + 0.1 * torch.randn(8, 16, generator=g)
        random_a, random_b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
        assert scl_loss(clustered, clustered_b, y) < scl_loss(random_a, random_b, y)


@pytest.mark.parametrize("loss", ["scl", "ce"])
def test_compute_selection_on_a_tiny_vit(registry, loss):
    items, labels = make_images(16, 2, size=32)
    model, spec = registry.load("tiny-vit", num_labels=2)
    source = BatchSource(items, labels, make_preprocessor(spec, image_size=32), torch.device("cpu"))
    config = GRFTConfig(k=3, selection_loss=loss, selection_samples=12, selection_batch_size=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sel = compute_selection(model, source, config)
    again = compute_selection(model, source, config)
    names = set(eligible_modules(model))
    assert set(sel.indices) == names
    assert any("patch_embed" in n for n in names)
    assert all(idx.numel() == 3 for idx in sel.indices.values())
    assert all(torch.equal(sel.indices[n], again.indices[n]) for n in names)  # deterministic
    assert sel.meta["samples"] == 12
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing trained
