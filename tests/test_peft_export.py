"""export_peft_lora: PEFT itself loads the export and gives the adapter's logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel

from grft_core.adapters.format import Adapter, adapter_tensors, apply_adapter, load_adapter, save_adapter
from grft_core.adapters.peft import export_peft_lora
from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import AdapterError
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.trainer import fit
from tests.conftest import make_images, make_texts

TABLE = [
    ("tiny-vit", "rows", 2),
    ("tiny-vit", "columns", 1),
    ("tiny-cnn", "rows", 2),
    ("tiny-cnn", "columns", 2),
    ("tiny-bert", "rows", {"query": 3, "*": 1}),  # per-module k: PEFT rank_pattern
    ("tiny-bert", "columns", 2),
]


@pytest.mark.parametrize(("name", "axis", "k"), TABLE, ids=[f"{t[0]}-{t[1]}" for t in TABLE])
def test_peft_loads_export_with_same_logits(registry, tmp_path, name, axis, k):
    text = name == "tiny-bert"
    items, labels = make_texts(16, 2) if text else make_images(16, 2, size=32)
    base, spec = registry.load(name, num_labels=2, seed=0)
    pre = make_preprocessor(spec, image_size=None if text else 32, max_length=16)
    config = GRFTConfig(
        k=k, axis=axis, epochs=1, batch_size=8, lr=2e-2, selection_samples=8, selection_batch_size=8
    )
    model = copy.deepcopy(base)
    fit(model, items, labels, items[:4], labels[:4], pre, config, evaluate_initial=False)
    doc = {
        "method": "grft",
        "base_model": name,
        "axis": axis,
        "labels": ["a", "b"],
        "modules": {n: {} for n in _wrapped(model)},
        "config": config.to_dict(),
    }
    save_adapter(tmp_path / "grft", adapter_tensors(model, "grft"), doc)
    adapter = load_adapter(tmp_path / "grft")

    export_peft_lora(adapter, base, tmp_path / "peft")
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA"
    assert (tmp_path / "peft" / "adapter_model.safetensors").exists()

    fresh, _ = registry.load(name, num_labels=2, seed=99)
    peft_model = PeftModel.from_pretrained(fresh, str(tmp_path / "peft")).eval()
    ours = apply_adapter(copy.deepcopy(base), adapter).eval()
    batch = BatchSource(items[:8], labels[:8], pre, torch.device("cpu")).batch(torch.arange(8))[0]
    with torch.no_grad():
        torch.testing.assert_close(peft_model(batch), ours(batch), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(peft_model(batch), model.eval()(batch), rtol=1e-4, atol=1e-5)


def _wrapped(model):
    from grft_core.method.model import grft_layers

    return grft_layers(model)


def test_head_only_adapter_is_refused(registry, tmp_path):
    base, _ = registry.load("tiny-vit", num_labels=2)
    save_adapter(
        tmp_path / "a",
        {"task_head.weight": base.task_head.weight.detach(), "task_head.bias": base.task_head.bias.detach()},
        {"method": "linear_probe", "base_model": "tiny-vit", "labels": ["a", "b"], "modules": {}},
    )
    with pytest.raises(AdapterError, match="only GRFT adapters"):
        export_peft_lora(load_adapter(tmp_path / "a"), base, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("position", "value"), [(0, -1), (-1, 64), (-1, 10_000)], ids=["neg", "out", "far"])
def test_index_outside_the_weight_is_refused_before_peft(registry, tmp_path, position, value):
    # Built in memory, past load_adapter's own checks: the export must not trust its input either
    # (a -1 would otherwise become a one-hot in the last row of lora_B, silently).
    base, _ = registry.load("tiny-vit", num_labels=2)
    name = "backbone.blocks.0.mlp.fc2"
    out_dim, in_dim = base.get_submodule(name).weight.shape
    assert value == -1 or value >= out_dim
    indices = torch.tensor([1, 2], dtype=torch.int32)
    indices[position] = value
    tensors = {
        f"{name}.grft_indices": indices,
        f"{name}.grft_delta": torch.zeros(2, in_dim),
        "task_head.weight": base.task_head.weight.detach(),
        "task_head.bias": base.task_head.bias.detach(),
    }
    doc = {"method": "grft", "base_model": "tiny-vit", "labels": ["a", "b"], "modules": [name]}
    with pytest.raises(AdapterError, match="grft_indices") as refused:
        export_peft_lora(Adapter(config=doc, tensors=tensors), base, tmp_path / "out")
    assert refused.value.code == "invalid_adapter"
    assert not (tmp_path / "out").exists()


def test_delta_of_the_wrong_width_is_refused(registry, tmp_path):
    base, _ = registry.load("tiny-vit", num_labels=2)
    name = "backbone.blocks.0.mlp.fc2"
    in_dim = base.get_submodule(name).weight.shape[1]
    tensors = {
        f"{name}.grft_indices": torch.tensor([1], dtype=torch.int32),
        f"{name}.grft_delta": torch.zeros(1, in_dim + 1),
        "task_head.weight": base.task_head.weight.detach(),
        "task_head.bias": base.task_head.bias.detach(),
    }
    doc = {"method": "grft", "base_model": "tiny-vit", "labels": ["a", "b"], "modules": [name]}
    with pytest.raises(AdapterError, match="grft_delta has shape"):
        export_peft_lora(Adapter(config=doc, tensors=tensors), base, tmp_path / "out")
    assert not (tmp_path / "out").exists()
