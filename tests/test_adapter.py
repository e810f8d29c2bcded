"""Adapters: save/load round trip, apply unmerged, merge into a copy, exact unmerge, fingerprints."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from grft_core.adapters.format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_tensors,
    apply_adapter,
    backbone_fingerprint,
    load_adapter,
    merge,
    merged_copy,
    save_adapter,
    unmerge,
)
from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import AdapterError, FingerprintMismatch
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.trainer import fit
from tests.conftest import make_images


@pytest.fixture(scope="module")
def trained(registry):
    """A tiny ViT trained with GRFT (rows, k=2), its inputs and its adapter document."""
    items, labels = make_images(24, 3, size=32)
    base, spec = registry.load("tiny-vit", num_labels=3, seed=0)
    fingerprint = backbone_fingerprint(base)
    model = copy.deepcopy(base)
    pre = make_preprocessor(spec, image_size=32)
    config = GRFTConfig(k=2, epochs=2, batch_size=8, lr=1e-2, selection_samples=16, selection_batch_size=8)
    result = fit(model, items, labels, items[:6], labels[:6], pre, config)
    doc = {
        "method": "grft",
        "base_model": "tiny-vit",
        "base_fingerprint": fingerprint,
        "axis": "rows",
        "labels": ["a", "b", "c"],
        "modules": {n: {} for n in result.selection.indices},
        "config": config.to_dict(),
    }
    batch = BatchSource(items[:8], labels[:8], pre, torch.device("cpu")).batch(torch.arange(8))[0]
    return model, doc, batch, result


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch)


class TestRoundTrip:
    def test_files_and_layout(self, trained, tmp_path):
        model, doc, _, result = trained
        save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
        adapter = load_adapter(tmp_path / "ad")
        name = next(iter(result.selection.indices))
        assert adapter.tensors[f"{name}.grft_indices"].dtype == torch.int32
        assert adapter.tensors[f"{name}.grft_delta"].shape[0] == 2
        assert f"{name}.grft_bias" in adapter.tensors
        assert {"task_head.weight", "task_head.bias"} <= set(adapter.tensors)
        assert json.loads((tmp_path / "ad" / CONFIG_NAME).read_text())["adapter_bytes"] > 0

    def test_applied_adapter_reproduces_trained_logits(self, trained, registry, tmp_path):
        model, doc, batch, _ = trained
        save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        fresh, _ = registry.load("tiny-vit", num_labels=3, seed=123)  # other head init: must be overwritten
        apply_adapter(fresh, load_adapter(tmp_path / "ad"))
        torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch))
        assert not any(p.requires_grad for p in fresh.parameters())

    def test_fp16_storage_is_smaller_and_close(self, trained, registry, tmp_path):
        model, doc, batch, _ = trained
        tensors = adapter_tensors(model, "grft")
        save_adapter(tmp_path / "fp32", tensors, doc)
        save_adapter(tmp_path / "fp16", tensors, doc, fp16=True)
        a16 = load_adapter(tmp_path / "fp16")
        assert a16.config["dtype"] == "float16"
        assert a16.nbytes() < load_adapter(tmp_path / "fp32").nbytes()
        assert all(t.dtype == torch.float16 for n, t in a16.tensors.items() if n.endswith(".grft_delta"))
        fresh, _ = registry.load("tiny-vit", num_labels=3)
        apply_adapter(fresh, a16)
        torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch), rtol=1e-2, atol=1e-2)

    def test_rewrite_replaces_atomically(self, trained, tmp_path):
        model, doc, _, _ = trained
        save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), {**doc, "labels": ["x", "y", "z"]})
        assert load_adapter(tmp_path / "ad").config["labels"] == ["x", "y", "z"]
        assert [p.name for p in tmp_path.iterdir()] == ["ad"]


class TestMerge:
    def test_merged_copy_matches_unmerged_and_leaves_original(self, trained, registry, tmp_path):
        model, doc, batch, _ = trained
        save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        adapted, _ = registry.load("tiny-vit", num_labels=3)
        apply_adapter(adapted, load_adapter(tmp_path / "ad"))
        before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
        merged = merged_copy(adapted)
        torch.testing.assert_close(_logits(merged, batch), _logits(adapted, batch))
        assert all(torch.equal(p, before[n]) for n, p in adapted.named_parameters())

    def test_unmerge_restores_base_bit_for_bit(self, trained, registry, tmp_path):
        model, doc, batch, _ = trained
        save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        adapted, _ = registry.load("tiny-vit", num_labels=3)
        apply_adapter(adapted, load_adapter(tmp_path / "ad"))
        base_state = {k: v.clone() for k, v in adapted.state_dict().items()}
        merge(adapted)
        assert any(not torch.equal(v, base_state[k]) for k, v in adapted.state_dict().items())
        unmerge(adapted)
        assert all(torch.equal(v, base_state[k]) for k, v in adapted.state_dict().items())
        assert backbone_fingerprint(adapted) == doc["base_fingerprint"]


class TestRefusals:
    def test_other_base_weights_are_refused(self, trained, registry, tmp_path):
        model, doc, _, _ = trained
        save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        other, _ = registry.load("tiny-vit", num_labels=3)
        with torch.no_grad():
            other.backbone.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
        with pytest.raises(FingerprintMismatch, match="different weights"):
            apply_adapter(other, load_adapter(tmp_path / "ad"))

    def test_missing_file_and_foreign_config(self, tmp_path):
        with pytest.raises(AdapterError, match="no adapter_config.json"):
            load_adapter(tmp_path)
        (tmp_path / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
        (tmp_path / WEIGHTS_NAME).write_bytes(b"")
        with pytest.raises(AdapterError, match="not a grft-adapter"):
            load_adapter(tmp_path)


def test_masked_dense_adapter_equals_grft_adapter(registry):
    items, labels = make_images(16, 2, size=32)
    base, spec = registry.load("tiny-vit", num_labels=2)
    pre = make_preprocessor(spec, image_size=32)
    config = GRFTConfig(k=1, epochs=1, batch_size=8, lr=1e-2, selection_samples=8, selection_batch_size=8)
    g_model, d_model = copy.deepcopy(base), copy.deepcopy(base)
    r = fit(g_model, items, labels, items[:4], labels[:4], pre, config)
    fit(
        d_model,
        items,
        labels,
        items[:4],
        labels[:4],
        pre,
        config.replace(method="masked_dense"),
        selection=r.selection,
    )
    g = adapter_tensors(g_model, "grft")
    d = adapter_tensors(d_model, "masked_dense", base.state_dict(), r.selection.indices, "rows")
    assert g.keys() == d.keys()
    for key in g:
        torch.testing.assert_close(d[key], g[key], rtol=1e-4, atol=5e-5)


def _rewrite(folder, change):
    """Load the folder's tensors, let ``change`` edit the dict in place, write them back."""
    tensors = load_file(str(folder / WEIGHTS_NAME))
    change(tensors)
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "grft-adapter"})


def _first(tensors, suffix):
    return next(n for n in sorted(tensors) if n.endswith(suffix))


def _truncate(folder):
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])


def _set_index(value, position):
    def change(t):
        name = _first(t, ".grft_indices")
        t[name] = t[name].clone()
        t[name][position] = value

    return lambda folder: _rewrite(folder, change)


def _retype(suffix, dtype):
    def change(t):
        name = _first(t, suffix)
        t[name] = t[name].to(dtype)

    return lambda folder: _rewrite(folder, change)


def _poison(suffix, value):
    def change(t):
        name = _first(t, suffix)
        t[name] = t[name].clone()
        t[name].view(-1)[0] = value

    return lambda folder: _rewrite(folder, change)


def _drop(suffix):
    return lambda folder: _rewrite(folder, lambda t: t.pop(_first(t, suffix)))


def _unsorted(folder):
    def change(t):
        name = _first(t, ".grft_indices")
        t[name] = t[name].flip(0).contiguous()

    _rewrite(folder, change)


def _duplicated(folder):
    def change(t):
        name = _first(t, ".grft_indices")
        t[name] = t[name][:1].repeat(t[name].numel()).contiguous()

    _rewrite(folder, change)


def _narrow_delta(folder):
    def change(t):
        name = _first(t, ".grft_delta")
        t[name] = t[name][:, :-1].contiguous()

    _rewrite(folder, change)


def _config(change):
    def corrupt(folder):
        doc = json.loads((folder / CONFIG_NAME).read_text())
        change(doc)
        (folder / CONFIG_NAME).write_text(json.dumps(doc))

    return corrupt


# (corruption, what the error says); every one must raise AdapterError while loading or applying.
CORRUPTIONS = {
    "truncated": (_truncate, "not a readable safetensors file"),
    "garbage": (lambda f: (f / WEIGHTS_NAME).write_bytes(b"\x00" * 64), "not a readable safetensors"),
    "nan-delta": (_poison(".grft_delta", float("nan")), "NaN or infinite"),
    "inf-head": (_poison("task_head.weight", float("inf")), "NaN or infinite"),
    "negative-index": (_set_index(-1, 0), "negative index"),
    "index-past-end": (_set_index(10_000, -1), "outside"),
    "unsorted": (_unsorted, "not strictly increasing"),
    "duplicated": (_duplicated, "not strictly increasing"),
    "float-indices": (_retype(".grft_indices", torch.float32), "int32 is expected"),
    "integer-delta": (_retype(".grft_delta", torch.int32), "floating dtype"),
    "delta-shape": (_narrow_delta, "grft_delta has shape"),
    "missing-delta": (_drop(".grft_delta"), "is missing"),
    "missing-head": (_drop("task_head.bias"), "is missing"),
    "no-method": (_config(lambda d: d.pop("method")), "unknown adapter method"),
    "labels-vs-head": (_config(lambda d: d.update(labels=["a", "b"])), "one row per label"),
    "unknown-module": (_config(lambda d: d["modules"].update({"nope.fc": {}})), "is missing"),
    "config-list": (_config(lambda d: d.update(config=[1])), "config must be an object"),
}


class TestCorruptFiles:
    @pytest.mark.parametrize("case", list(CORRUPTIONS))
    def test_corruption_is_an_adapter_error(self, trained, registry, tmp_path, case):
        model, doc, _, _ = trained
        folder = save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        corrupt, message = CORRUPTIONS[case]
        corrupt(folder)
        fresh, _ = registry.load("tiny-vit", num_labels=3)
        with pytest.raises(AdapterError, match=message) as refused:
            apply_adapter(fresh, load_adapter(folder))
        assert refused.value.status_code == 422
        assert refused.value.code == "invalid_adapter"

    def test_recorded_shape_refuses_out_of_range_at_load(self, trained, tmp_path):
        model, doc, _, _ = trained
        name = next(iter(doc["modules"]))
        doc = {**doc, "modules": {**doc["modules"], name: {"shape": [4, 4]}}}
        folder = save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        with pytest.raises(AdapterError):  # the delta is wider than 4 columns, or an index is >= 4
            load_adapter(folder)

    def test_module_missing_from_the_model_is_refused(self, trained, registry, tmp_path):
        model, doc, _, _ = trained
        tensors = adapter_tensors(model, "grft")
        name = next(iter(doc["modules"]))
        renamed = {k.replace(name, "backbone.nope"): v for k, v in tensors.items()}
        modules = {("backbone.nope" if m == name else m): v for m, v in doc["modules"].items()}
        folder = save_adapter(tmp_path / "ad", renamed, {**doc, "modules": modules})
        fresh, _ = registry.load("tiny-vit", num_labels=3)
        with pytest.raises(AdapterError, match="no module backbone.nope"):
            apply_adapter(fresh, load_adapter(folder))

    def test_config_that_is_not_an_object(self, trained, tmp_path):
        model, doc, _, _ = trained
        folder = save_adapter(tmp_path / "ad", adapter_tensors(model, "grft"), doc)
        (folder / CONFIG_NAME).write_text("[1, 2]")
        with pytest.raises(AdapterError, match="not a JSON object"):
            load_adapter(folder)
