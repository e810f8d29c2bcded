"""The random-rows control: the same k per matrix as GRFT, drawn by a seeded generator, no data read."""

from __future__ import annotations

import pytest
import torch

from grft_core.adapters.format import load_adapter
from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import ConfigError
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.model import eligible_modules
from grft_core.method.setup import compute_selection
from grft_core.method.trainer import fit
from grft_core.pipeline import train_to_folder
from tests.conftest import make_images


class _NoData(BatchSource):
    """A source that fails if anything reads it: the random strategy must not run a gradient pass."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batch(self, idx):
        raise AssertionError("the random strategy read training data")


@pytest.fixture(scope="module")
def cnn(registry):
    model, spec = registry.load("tiny-cnn", num_labels=2, seed=0)
    return model, spec


def _select(model, **changes):
    config = GRFTConfig(selection_strategy="random", **changes)
    return compute_selection(model, _NoData(8), config)


class TestRandomSelection:
    def test_same_seed_same_selection(self, cnn):
        model, _ = cnn
        a, b = _select(model, k=2, seed=3), _select(model, k=2, seed=3)
        assert list(a.indices) == list(b.indices)
        for name in a.indices:
            torch.testing.assert_close(a.indices[name], b.indices[name])

    def test_different_seeds_differ(self, cnn):
        model, _ = cnn
        a, b = _select(model, k=2, seed=0), _select(model, k=2, seed=1)
        assert any(not torch.equal(a.indices[n], b.indices[n]) for n in a.indices)

    @pytest.mark.parametrize("axis", ["rows", "columns"])
    def test_k_distinct_sorted_indices_per_module(self, cnn, axis):
        model, _ = cnn
        sel = _select(model, k=3, axis=axis)
        modules = eligible_modules(model)
        assert set(sel.indices) == set(modules)
        dim = 0 if axis == "rows" else 1
        for name, idx in sel.indices.items():
            length = sel.shapes[name][dim]
            assert idx.numel() == min(3, length)
            assert len(set(idx.tolist())) == idx.numel()
            assert torch.equal(idx, idx.sort().values)
            assert int(idx.min()) >= 0
            assert int(idx.max()) < length
        assert sel.meta["selection_strategy"] == "random"

    def test_k_map_is_respected(self, cnn):
        model, _ = cnn
        names = list(eligible_modules(model))
        first, last = names[0], names[-1]
        sel = _select(model, k={first: 1, last: 2})
        assert set(sel.indices) == {first, last}
        assert sel.indices[first].numel() == 1
        assert sel.indices[last].numel() == 2

    def test_k_map_naming_nothing_is_an_error(self, cnn):
        model, _ = cnn
        with pytest.raises(ConfigError, match="selects nothing"):
            _select(model, k={"no.such.module": 1})


class TestRandomSelectionTrains:
    def test_fit_trains_the_drawn_rows(self, registry):
        items, labels = make_images(24, 2, size=16)
        model, spec = registry.load("tiny-cnn", num_labels=2, seed=0)
        config = GRFTConfig(
            selection_strategy="random", k=2, epochs=1, batch_size=8, lr=1e-2, image_size=16, seed=5
        )
        result = fit(
            model, items, labels, items[:8], labels[:8], make_preprocessor(spec, image_size=16), config
        )
        assert result.selection is not None
        assert result.selection.meta["selection_strategy"] == "random"
        expected = _select(registry.load("tiny-cnn", num_labels=2, seed=0)[0], k=2, seed=5)
        for name, idx in expected.indices.items():
            assert torch.equal(result.selection.indices[name], idx)
        assert result.steps == 3
        assert result.trainable_params > 0

    def test_pipeline_writes_an_adapter(self, registry, tmp_path):
        from grft_core.data.samples import digits_image_folder

        data = digits_image_folder(tmp_path / "data", size=16, limit_per_class=4)
        config = GRFTConfig(selection_strategy="random", k=1, epochs=1, batch_size=8, image_size=16)
        out = tmp_path / "adapter"
        metrics = train_to_folder("tiny-cnn", str(data), out, config, registry=registry)
        assert metrics["adapter_bytes"] > 0
        adapter = load_adapter(out)
        assert adapter.config["config"]["selection_strategy"] == "random"
        assert all(adapter.tensors[f"{m}.grft_indices"].numel() == 1 for m in adapter.modules)
