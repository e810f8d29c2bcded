"""GRFT on a tiny LLaMA: selection scores decoder Linears only, masked training moves only the selected
rows and lowers the assistant-token loss, GRFT equals its masked-dense reference, and the adapter
applies to the plain Hugging Face model with the same logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from grft_core.adapters.format import apply_adapter, load_adapter
from grft_core.data.chat import ChatData, parse_chat_line
from grft_core.data.chat_tokens import encode_chat_data
from grft_core.errors import ConfigError
from grft_core.method.batching import BatchSource
from grft_core.method.causal_lm import CausalLMCollator, CausalLMForTraining
from grft_core.method.config import GRFTConfig
from grft_core.method.model import eligible_modules
from grft_core.method.setup import compute_selection, inject_lora
from grft_core.models.registry import ModelRegistry
from grft_core.pipeline import train_to_folder
from tests.lm.helpers import chat_lines, write_jsonl

DECODER_LINEARS = {
    f"model.layers.{i}.{part}"
    for i in range(2)
    for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
}  # fmt: skip
FAST = {"epochs": 3, "batch_size": 8, "lr": 5e-2, "seed": 0, "warmup_ratio": 0.0}


@pytest.fixture
def lm(registry: ModelRegistry, tiny_lm: str) -> tuple[CausalLMForTraining, Any]:
    model, tokenizer, _ = registry.load_causal_lm(tiny_lm)
    return CausalLMForTraining(model), tokenizer


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", chat_lines(48))


def source(tokenizer: Any, count: int = 16) -> BatchSource:
    data = ChatData("chat", "t", [parse_chat_line(r, "t", "l")[1] for r in chat_lines(count)])
    items, _ = encode_chat_data(data, tokenizer, 128)
    return BatchSource(items, [0] * len(items), CausalLMCollator(0, 128), torch.device("cpu"))


class TestEligible:
    def test_decoder_linears_only_never_embeddings_or_lm_head(self, lm: tuple[Any, Any]) -> None:
        view, _ = lm
        assert set(eligible_modules(view)) == DECODER_LINEARS
        # The same rule on the plain model, whose lm_head is tied to the input embeddings.
        assert set(eligible_modules(view.lm)) == DECODER_LINEARS

    def test_selection_picks_rows_of_the_expected_modules(self, lm: tuple[Any, Any]) -> None:
        view, tokenizer = lm
        config = GRFTConfig(k=3, selection_loss="ce", selection_batch_size=4)
        selection = compute_selection(view, source(tokenizer), config)

        assert set(selection.indices) == DECODER_LINEARS
        for name, idx in selection.indices.items():
            assert idx.numel() == 3
            scores = selection.scores[name]
            assert scores.numel() == view.get_submodule(name).out_features
            # The k best rows by summed squared gradient.
            assert set(idx.tolist()) == set(scores.topk(3).indices.tolist())
        assert all(float(s.sum()) > 0 for s in selection.scores.values())

    def test_lora_targets_the_same_modules(self, lm: tuple[Any, Any]) -> None:
        view, _ = lm
        assert set(inject_lora(view, GRFTConfig(method="lora", lora_rank=2))) == DECODER_LINEARS


class TestTraining:
    def test_only_selected_rows_move_and_the_loss_falls(
        self, registry: ModelRegistry, tiny_lm: str, data_file: Path, tmp_path: Path
    ) -> None:
        config = GRFTConfig(k=4, **FAST)
        metrics = train_to_folder(tiny_lm, str(data_file), tmp_path / "a", config, registry=registry)

        losses = [h["val_loss"] for h in metrics["history"]]
        assert losses[-1] < losses[0]
        assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
        assert metrics["best_val_accuracy"] > metrics["initial_val_accuracy"]

        base, _, _ = registry.load_causal_lm(tiny_lm)
        tuned, _, _ = registry.load_causal_lm(tiny_lm)
        adapter = load_adapter(tmp_path / "a")
        apply_adapter(tuned, adapter)
        for layer in [m for m in tuned.modules() if hasattr(m, "merge")]:
            layer.merge()
        before, after = base.state_dict(), tuned.state_dict()
        for key, value in before.items():
            moved = after[key.replace(".weight", ".base_layer.weight")] if key not in after else after[key]
            module = key.rsplit(".", 1)[0]
            if module in adapter.modules and key.endswith(".weight"):
                rows = adapter.tensors[f"{module}.grft_indices"].long()
                changed = (moved != value).any(dim=1).nonzero().flatten()
                assert set(changed.tolist()) <= set(rows.tolist())
                assert changed.numel() > 0
            elif not key.endswith(".bias"):
                torch.testing.assert_close(moved, value, rtol=0, atol=0)  # embeddings, norms, lm_head

    def test_grft_equals_masked_dense(
        self, registry: ModelRegistry, tiny_lm: str, data_file: Path, tmp_path: Path
    ) -> None:
        runs = {}
        for method in ("grft", "masked_dense"):
            config = GRFTConfig(method=method, k=4, **FAST)
            runs[method] = train_to_folder(
                tiny_lm, str(data_file), tmp_path / method, config, registry=registry
            )
            adapter = load_adapter(tmp_path / method)
            assert adapter.config["task"] == "causal_lm"
            assert not any(name.startswith("task_head") for name in adapter.tensors)
        a, b = load_adapter(tmp_path / "grft"), load_adapter(tmp_path / "masked_dense")
        assert set(a.tensors) == set(b.tensors)
        for name, tensor in a.tensors.items():
            torch.testing.assert_close(tensor, b.tensors[name], rtol=1e-4, atol=1e-5)
        grft_losses = [h["val_loss"] for h in runs["grft"]["history"]]
        dense_losses = [h["val_loss"] for h in runs["masked_dense"]["history"]]
        torch.testing.assert_close(
            torch.tensor(grft_losses), torch.tensor(dense_losses), rtol=1e-4, atol=1e-5
        )

    @pytest.mark.parametrize("method", ["lora", "full"])
    def test_baselines_run_the_same_path(
        self, registry: ModelRegistry, tiny_lm: str, data_file: Path, tmp_path: Path, method: str
    ) -> None:
        config = GRFTConfig(method=method, **{**FAST, "lr": 1e-2, "epochs": 2})
        metrics = train_to_folder(tiny_lm, str(data_file), tmp_path / method, config, registry=registry)
        assert metrics["history"][-1]["val_loss"] < metrics["history"][0]["val_loss"] + 1e-3
        adapter = load_adapter(tmp_path / method)
        model, _, _ = registry.load_causal_lm(tiny_lm)
        apply_adapter(model, adapter)  # LoRA tensors or the whole state, tied weights stored once

    def test_linear_probe_is_refused(
        self, registry: ModelRegistry, tiny_lm: str, data_file: Path, tmp_path: Path
    ) -> None:
        with pytest.raises(ConfigError, match="no") as caught:
            train_to_folder(tiny_lm, str(data_file), tmp_path / "p", GRFTConfig(method="linear_probe"))
        assert caught.value.param == "method"

    def test_adapter_on_the_plain_model_gives_the_trained_logits(
        self, registry: ModelRegistry, tiny_lm: str, data_file: Path, tmp_path: Path
    ) -> None:
        config = GRFTConfig(k=4, axis="columns", **FAST)
        metrics = train_to_folder(tiny_lm, str(data_file), tmp_path / "c", config, registry=registry)
        doc = json.loads((tmp_path / "c" / "adapter_config.json").read_text())

        assert doc["preprocessing"] == {"kind": "causal_lm", "max_length": 128, "format": "chat"}
        assert metrics["trained_tokens"] == metrics["data"]["train"]["tokens"] * 3 > 0
        model, tokenizer, spec = registry.load_causal_lm(tiny_lm)
        assert doc["base_fingerprint"] == spec.fingerprint
        apply_adapter(model, load_adapter(tmp_path / "c"))  # checks the fingerprint of the plain model
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "say red"}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        with torch.no_grad():
            plain = model(input_ids=ids).logits[0, -1]
            view = CausalLMForTraining(model)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            mask[0, -1] = True
            viewed = view({"input_ids": ids, "attention_mask": torch.ones_like(ids), "target_mask": mask})[0]
        torch.testing.assert_close(viewed, plain)
        base, _, _ = registry.load_causal_lm(tiny_lm)
        with torch.no_grad():
            assert not torch.allclose(base(input_ids=ids).logits[0, -1], plain)


def test_model_count_is_the_whole_model(lm: tuple[Any, Any]) -> None:
    view, _ = lm
    assert isinstance(view.get_output_embeddings(), nn.Linear)
    assert sum(p.numel() for p in view.parameters()) == sum(p.numel() for p in view.lm.parameters())


def test_gradient_checkpointing_gives_the_same_gradients(registry: ModelRegistry, tiny_lm: str) -> None:
    """What a CUDA run turns on (non-reentrant checkpointing) through GRFT's layers: same loss, same
    delta gradients. Run on the CPU here: checkpointing itself does not need a GPU."""
    from grft_core.method.causal_lm import enable_memory_savers
    from grft_core.method.model import apply_grft, grft_layers

    grads = []
    for checkpointing in (False, True):
        model, tokenizer, _ = registry.load_causal_lm(tiny_lm)
        view = CausalLMForTraining(model)
        assert not enable_memory_savers(view, torch.device("cpu"))
        if checkpointing:
            assert enable_memory_savers(view, torch.device("cuda"))
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        rows = {name: torch.tensor([0, 3]) for name in DECODER_LINEARS}
        apply_grft(view, rows, "rows")
        for layer in grft_layers(view).values():
            torch.nn.init.normal_(layer.grft_delta, std=0.01, generator=torch.Generator().manual_seed(0))
        view.train()
        inputs, labels = source(tokenizer, 4).batch(torch.arange(4))
        torch.nn.functional.cross_entropy(view(inputs), labels).backward()
        grads.append({n: layer.grft_delta.grad.clone() for n, layer in grft_layers(view).items()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad)
