"""export_peft_lora on classifiers: PEFT attaches the export to the plain transformers encoder or timm model,
and with the shipped head and the documented pooling gives grft's logits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel

from grft_core.adapters.format import Adapter, adapter_tensors, apply_adapter, load_adapter, save_adapter
from grft_core.adapters.peft import EXPORT_INFO, HEAD_FILE, README_FILE, export_peft_lora
from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import AdapterError
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.trainer import fit
from grft_core.models.classifier import Classifier, mean_pool
from grft_core.models.registry import ModelSpec
from tests.conftest import make_images, make_texts

TABLE = [
    ("tiny-vit", "rows", 2),
    ("tiny-vit", "columns", 1),
    ("tiny-cnn", "rows", 2),
    ("tiny-cnn", "columns", 2),
    ("tiny-bert", "rows", {"query": 3, "*": 1}),  # per-module k: padded to one rank
    ("tiny-bert", "columns", 2),
]


def plain_logits(spec: ModelSpec, export: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What someone without grft does: the plain model, PEFT, the documented pooling, the head file."""
    info = json.loads((export / EXPORT_INFO).read_text())
    if spec.family == "transformers":
        # The default AutoModel keeps its (unused) pooler: the export must attach no LoRA to it.
        plain = AutoModel.from_pretrained(spec.config_dir, dtype=torch.float32)
        assert info["kind"] == "text_classifier"
    else:
        plain = timm.create_model(info["timm_architecture"], num_classes=0, **spec.timm_kwargs)
        plain.load_state_dict(load_file(spec.weights))
        assert info["kind"] == "image_classifier"
    model = PeftModel.from_pretrained(plain, str(export)).eval()
    carrying = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert carrying == set(info["target_modules"])
    head = load_file(str(export / HEAD_FILE))
    with torch.no_grad():
        if spec.family == "transformers":
            inputs = {
                k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            pooled = mean_pool(model(**inputs).last_hidden_state, batch["attention_mask"])
        else:
            pooled = model(batch["pixel_values"])
    return pooled @ head["weight"].T + head["bias"]


@pytest.mark.parametrize(("name", "axis", "k"), TABLE, ids=[f"{t[0]}-{t[1]}" for t in TABLE])
def test_peft_loads_export_on_the_plain_model_with_same_logits(registry, tmp_path, name, axis, k):
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
    assert peft_config["modules_to_save"] is None
    assert peft_config["base_model_name_or_path"] == name
    assert sorted(peft_config["target_modules"]) == sorted(
        m.removeprefix("backbone.") for m in adapter.modules
    )
    keys = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert all(
        k.startswith("base_model.model.") and "backbone" not in k and "task_head" not in k for k in keys
    )
    assert "pooling" in (tmp_path / "peft" / README_FILE).read_text().lower()

    batch = BatchSource(items[:8], labels[:8], pre, torch.device("cpu")).batch(torch.arange(8))[0]
    ours = apply_adapter(copy.deepcopy(base), adapter).eval()
    with torch.no_grad():
        expected = ours(batch)
        torch.testing.assert_close(expected, model.eval()(batch), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain_logits(spec, tmp_path / "peft", batch), expected, rtol=1e-4, atol=1e-5)


def test_real_minilm_export_loads_on_automodel(registry, tmp_path):
    """The MiniLM entry, rows on the last block only: the real weights and tokenizer, seconds on CPU."""
    base, spec = registry.load("all-minilm-l6-v2", num_labels=3, seed=0)
    items, _ = make_texts(6, 3)
    pre = make_preprocessor(spec, max_length=24)
    batch = BatchSource(items, [0] * 6, pre, torch.device("cpu")).batch(torch.arange(6))[0]
    names = [
        n
        for n, m in base.named_modules()
        if n.startswith("backbone.encoder.layer.5.") and isinstance(m, torch.nn.Linear)
    ]
    g = torch.Generator().manual_seed(0)
    tensors = {
        "task_head.weight": base.task_head.weight.detach(),
        "task_head.bias": base.task_head.bias.detach(),
    }
    for n in names:
        layer = base.get_submodule(n)
        tensors[f"{n}.grft_indices"] = torch.tensor([3, 40, 77], dtype=torch.int32)
        tensors[f"{n}.grft_delta"] = 0.05 * torch.randn(3, layer.in_features, generator=g)
    doc = {
        "method": "grft",
        "base_model": spec.name,
        "axis": "rows",
        "labels": ["a", "b", "c"],
        "modules": names,
    }
    adapter = Adapter(config=doc, tensors=tensors)

    export_peft_lora(adapter, base, tmp_path / "peft")

    with torch.no_grad():
        expected = apply_adapter(copy.deepcopy(base), adapter).eval()(batch)
        assert not torch.allclose(base(batch), expected, atol=1e-4)
    torch.testing.assert_close(plain_logits(spec, tmp_path / "peft", batch), expected, rtol=1e-4, atol=1e-5)


def test_classifier_over_another_backbone_is_refused(tmp_path):
    backbone = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    model = Classifier(backbone, modality="image", num_labels=2, num_features=4)
    name = "backbone.0"
    tensors = {
        f"{name}.grft_indices": torch.tensor([1], dtype=torch.int32),
        f"{name}.grft_delta": torch.ones(1, 4),
        "task_head.weight": model.task_head.weight.detach(),
        "task_head.bias": model.task_head.bias.detach(),
    }
    doc = {"method": "grft", "base_model": "custom", "labels": ["a", "b"], "modules": [name]}
    with pytest.raises(AdapterError, match="transformers encoder or a timm model") as refused:
        export_peft_lora(Adapter(config=doc, tensors=tensors), model, tmp_path / "out")
    assert refused.value.param == "base_model"
    assert not (tmp_path / "out").exists()


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
