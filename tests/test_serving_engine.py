"""The serving engine: a heterogeneous batch equals each item run alone with its merged adapter."""

from __future__ import annotations

import pytest
import torch

from grft_core.adapters.format import Adapter, apply_adapter, merge
from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import AdapterError, FingerprintMismatch
from grft_core.serving import ServingEngine
from tests.conftest import make_images, make_texts
from tests.serving_helpers import random_adapter


def _engine(registry, base: str) -> ServingEngine:
    model, spec = registry.load(base, num_labels=2, seed=99)
    return ServingEngine(model, spec=spec, device=torch.device("cpu"))


def _merged_logits(registry, base: str, adapter: Adapter, inputs) -> torch.Tensor:
    model, _ = registry.load(base, num_labels=len(adapter.config["labels"]))
    apply_adapter(model, adapter)
    merge(model)
    with torch.no_grad():
        return model(inputs)


def _inputs(registry, base: str, n: int):
    spec = registry.get(base)
    pre = make_preprocessor(spec)
    items = make_texts(n)[0] if spec.modality == "text" else make_images(n, 3, size=40)[0]
    return items, pre(items)


CASES = [
    # base, adapters as (axis, k, labels, depthwise)
    ("tiny-vit", [("rows", 1, 3, False), ("rows", 4, 5, False), ("columns", 2, 2, False)]),
    ("tiny-bert", [("rows", 2, 3, False), ("columns", 3, 4, False), ("rows", 8, 2, False)]),
    ("tiny-cnn", [("rows", 2, 3, True), ("columns", 3, 4, True), ("rows", 1, 2, False)]),
]


@pytest.mark.parametrize(("base", "specs"), CASES, ids=[c[0] for c in CASES])
def test_heterogeneous_batch_equals_each_item_alone_with_its_merged_adapter(registry, base, specs):
    engine = _engine(registry, base)
    adapters = {}
    for i, (axis, k, labels, depthwise) in enumerate(specs):
        adapters[f"a{i}"] = random_adapter(
            registry, base, seed=i + 1, axis=axis, k=k, num_labels=labels, include_depthwise=depthwise
        )
        engine.add(f"a{i}", adapters[f"a{i}"])
    # Every adapter, repeated and interleaved, plus items with no adapter at all.
    ids = ["a0", "a1", None, "a2", "a1", "a0", "a2", None]
    items, inputs = _inputs(registry, base, len(ids))
    got = engine.logits(inputs, ids)
    base_model, _ = registry.load(base, num_labels=2, seed=99)
    with torch.no_grad():
        base_logits = base_model(inputs)
    for row, adapter_id in enumerate(ids):
        one = {k: v[row : row + 1] for k, v in inputs.items()}
        if adapter_id is None:
            want = base_logits[row : row + 1]
        else:
            want = _merged_logits(registry, base, adapters[adapter_id], one)
        n = want.shape[1]
        torch.testing.assert_close(got[row : row + 1, :n], want, rtol=1e-4, atol=1e-4)
        assert torch.isneginf(got[row, n:]).all()
    probs = engine.probabilities(items, ids)
    assert [p.numel() for p in probs] == [2 if a is None else len(adapters[a].config["labels"]) for a in ids]
    torch.testing.assert_close(torch.stack([p.sum() for p in probs]), torch.ones(len(ids)))


def test_no_adapter_batch_is_the_base_model(registry):
    engine = _engine(registry, "tiny-vit")
    engine.add("a", random_adapter(registry, "tiny-vit", seed=3))
    _, inputs = _inputs(registry, "tiny-vit", 4)
    model, _ = registry.load("tiny-vit", num_labels=2, seed=99)
    with torch.no_grad():
        # Only the head's arithmetic differs (a batched matmul instead of F.linear): rounding-level.
        torch.testing.assert_close(engine.logits(inputs, [None] * 4), model(inputs), rtol=1e-6, atol=1e-6)


def test_removed_slot_is_reused_and_adds_nothing(registry):
    engine = _engine(registry, "tiny-bert")
    first = engine.add("a", random_adapter(registry, "tiny-bert", seed=1, k=4))
    assert engine.remove("a")
    assert "a" not in engine
    assert not engine.remove("a")
    second = engine.add("b", random_adapter(registry, "tiny-bert", seed=2, k=1, axis="columns"))
    assert second.slot == first.slot
    adapter = random_adapter(registry, "tiny-bert", seed=2, k=1, axis="columns")
    _, inputs = _inputs(registry, "tiny-bert", 2)
    torch.testing.assert_close(
        engine.logits(inputs, ["b", "b"])[:, :3], _merged_logits(registry, "tiny-bert", adapter, inputs)
    )


def test_adapter_for_other_weights_or_method_is_refused(registry):
    engine = _engine(registry, "tiny-vit")
    adapter = random_adapter(registry, "tiny-vit", seed=1)
    adapter.config["base_fingerprint"] = "0" * 16
    with pytest.raises(FingerprintMismatch):
        engine.add("x", adapter)
    other = random_adapter(registry, "tiny-bert", seed=1)
    other.config.pop("base_fingerprint")
    with pytest.raises(AdapterError, match="does not fit"):
        engine.add("y", other)
    lora = Adapter(config={**adapter.config, "method": "lora"}, tensors=adapter.tensors)
    with pytest.raises(AdapterError, match="lora"):
        engine.add("z", lora)
    assert engine.adapters() == []
    with pytest.raises(KeyError):
        engine.logits(_inputs(registry, "tiny-vit", 1)[1], ["x"])


def test_reduced_precision_engine_stays_close(registry):
    """The bf16 path CUDA uses, run on the CPU: banks, heads and inputs in the engine's dtype."""
    model, spec = registry.load("tiny-bert", num_labels=2, seed=99)
    engine = ServingEngine(model, spec=spec, device=torch.device("cpu"), dtype=torch.bfloat16)
    adapter = random_adapter(registry, "tiny-bert", seed=5, k=3)
    engine.add("a", adapter)
    assert engine.model.task_head.weight.dtype == torch.bfloat16
    _, inputs = _inputs(registry, "tiny-bert", 3)
    got = engine.logits(inputs, ["a", None, "a"])
    assert got.dtype == torch.float32
    want = _merged_logits(registry, "tiny-bert", adapter, inputs)
    torch.testing.assert_close(got[[0, 2], :3], want[[0, 2]], rtol=0.05, atol=0.05)
