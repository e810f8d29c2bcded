"""A GRFT adapter on a causal LM exports as a LoRA that PEFT attaches to the plain Hugging Face model
with the same logits, in the key layout vLLM's loader parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from grft_core.adapters.format import Adapter
from grft_core.adapters.peft import EXPORT_INFO, HEAD_FILE, export_peft_lora
from grft_core.errors import AdapterError
from grft_core.method.model import apply_grft, eligible_modules, grft_layers
from grft_core.method.selection import score_modules, select_top_k

VOCAB = 96


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def _load(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _trained_adapter(folder: Path, axis: str, k: int) -> tuple[torch.nn.Module, Adapter, torch.Tensor]:
    """Select rows/columns by gradient, train the deltas a few Adam steps: grft_core's own functions."""
    model = _load(folder)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (4, 12), generator=g)
    modules = {n: m for n, m in eligible_modules(model).items() if n != "lm_head"}

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, labels=batch).loss

    scores = score_modules(model, modules, [tokens[:2], tokens[2:]], loss_fn, axis=axis)
    shapes = {n: (m.out_features, m.in_features) for n, m in modules.items()}
    # One module keeps fewer rows than the rest: the export pads it to the common rank.
    selection = select_top_k(scores, lambda n: 1 if n.endswith("0.self_attn.q_proj") else k, axis, shapes)
    apply_grft(model, selection.indices, axis)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=5e-2)
    for _ in range(3):
        optimizer.zero_grad()
        loss_fn(tokens).backward()
        optimizer.step()
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in grft_layers(model).items():
        tensors[f"{name}.grft_indices"] = layer.grft_indices.to(torch.int32)
        tensors[f"{name}.grft_delta"] = layer.grft_delta.detach().clone()
    doc = {"method": "grft", "base_model": "tiny-llama", "axis": axis, "modules": list(grft_layers(model))}
    return model.eval(), Adapter(config=doc, tensors=tensors), tokens


@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_peft_loads_the_export_on_the_plain_causal_lm(base_folder, tmp_path, axis):
    ours, adapter, tokens = _trained_adapter(base_folder, axis, k=3)
    assert all(float(adapter.tensors[f"{m}.grft_delta"].abs().sum()) > 0 for m in adapter.modules)

    out = export_peft_lora(adapter, _load(base_folder), tmp_path / "peft", base_name="tiny-llama")

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert config["modules_to_save"] is None
    assert config["base_model_name_or_path"] == "tiny-llama"
    assert sorted(config["target_modules"]) == sorted(adapter.modules)
    assert config["r"] == config["lora_alpha"] == 3
    assert not config["rank_pattern"]
    keys = set(load_file(str(out / "adapter_model.safetensors")))
    expected = {f"base_model.model.{m}.lora_{ab}.weight" for m in adapter.modules for ab in "AB"}
    assert keys == expected  # no ".default." infix, no head, no bias
    assert not (out / HEAD_FILE).exists()
    assert json.loads((out / EXPORT_INFO).read_text())["kind"] == "causal_lm"

    plain = PeftModel.from_pretrained(_load(base_folder), str(out)).eval()
    carrying = {n.removeprefix("base_model.model.") for n, m in plain.named_modules() if hasattr(m, "lora_A")}
    assert carrying == set(adapter.modules)  # no empty LoRA attached anywhere else
    with torch.no_grad():
        reference = ours(input_ids=tokens).logits
        torch.testing.assert_close(plain(input_ids=tokens).logits, reference, rtol=0, atol=1e-5)
        # The export is not a no-op: the base alone differs.
        assert not torch.allclose(_load(base_folder)(input_ids=tokens).logits, reference, atol=1e-4)


def test_a_wrapped_lm_exports_its_own_paths_and_other_models_are_refused(base_folder, tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self, lm: torch.nn.Module) -> None:
            super().__init__()
            self.lm = lm

    _, adapter, _ = _trained_adapter(base_folder, "rows", k=2)
    wrapped = Adapter(
        config={**adapter.config, "modules": [f"lm.{m}" for m in adapter.modules]},
        tensors={f"lm.{n}": t for n, t in adapter.tensors.items()},
    )
    out = export_peft_lora(wrapped, Wrapper(_load(base_folder)), tmp_path / "wrapped")
    # Paths relative to the LM inside the wrapper, so the export still loads onto the plain LM.
    assert sorted(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == sorted(
        adapter.modules
    )

    with pytest.raises(AdapterError, match="no plain transformers or timm form"):
        export_peft_lora(adapter, torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_pipeline_exports_an_adapter_folder_of_a_registered_causal_lm(base_folder, registry, tmp_path):
    """The route and CLI path: ``export_peft`` loads the registered LM, not a classifier."""
    from transformers import AutoTokenizer

    from grft_core.adapters.format import save_adapter
    from grft_core.adapters.validation import CAUSAL_LM_TASK
    from grft_core.pipeline import export_peft

    source = tmp_path / "source"
    LlamaForCausalLM.from_pretrained(str(base_folder)).save_pretrained(str(source))
    tokenizer_dir = registry.get("tiny-bert").config_dir  # any local tokenizer will do
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(str(source))
    spec = registry.add_causal_lm("tiny-llama-export", source)
    ours, adapter, tokens = _trained_adapter(base_folder, "rows", k=2)
    doc = {**adapter.config, "task": CAUSAL_LM_TASK, "labels": [], "base_model": spec.name}
    doc["base_fingerprint"] = spec.fingerprint
    save_adapter(tmp_path / "grft", adapter.tensors, doc)

    out = export_peft(tmp_path / "grft", tmp_path / "peft", registry)

    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == spec.name
    plain = PeftModel.from_pretrained(_load(base_folder), str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=tokens).logits, ours(input_ids=tokens).logits, rtol=0, atol=1e-5
        )
