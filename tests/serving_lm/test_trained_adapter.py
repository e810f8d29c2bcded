"""An adapter trained by the library's causal-LM pipeline serves through the generation path unchanged:
loaded from its folder (checked against the base), it answers as the base with its rows merged."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from grft_core.adapters.format import load_adapter, merged_copy
from grft_core.method.config import GRFTConfig
from grft_core.method.model import apply_grft
from grft_core.models.registry import ModelRegistry
from grft_core.pipeline import train_to_folder
from grft_core.serving.generation import GenerationEngine
from grft_core.serving.generation_adapters import GenerationAdapters
from grft_core.serving.generation_sampling import SamplingParams
from tests.serving_lm.tiny import tiny_llama, tiny_tokenizer

WORDS = ["cats", "dogs", "fox", "time", "model"]


def test_a_trained_adapter_answers_as_the_merged_model(tmp_path: Path) -> None:
    source = tmp_path / "source"
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer).save_pretrained(str(source), safe_serialization=True)
    tokenizer.save_pretrained(str(source))
    registry = ModelRegistry(tmp_path / "store")
    registry.add_causal_lm("tiny-lm", source)
    rows = [
        {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"{w} {w}"}]}
        for w in WORDS * 4
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = GRFTConfig(k=3, epochs=2, batch_size=4, lr=5e-2, seed=0, warmup_ratio=0.0)
    train_to_folder("tiny-lm", str(data), tmp_path / "adapter", config, registry=registry)

    model, tok, spec = registry.load_causal_lm("tiny-lm")
    engine = GenerationEngine(copy.deepcopy(model), tok, fingerprint=spec.fingerprint)
    try:
        loaded = GenerationAdapters(lambda _: engine, budget_bytes=1 << 30)
        with loaded.leased("trained", lambda: tmp_path / "adapter") as (_, served):
            prompt = engine.chat_prompt([{"role": "user", "content": "say cats"}])
            got = engine.generate(prompt, "trained", SamplingParams(max_tokens=6, temperature=0.0)).token_ids
            base = engine.generate(prompt, None, SamplingParams(max_tokens=6, temperature=0.0)).token_ids
    finally:
        engine.close()

    adapter = load_adapter(tmp_path / "adapter")
    t = adapter.tensors
    adapted = copy.deepcopy(model)
    indices = {m: t[f"{m}.grft_indices"].long() for m in adapter.modules}
    layers = apply_grft(adapted, indices, adapter.config.get("axis", "rows"), train_bias=False)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.grft_delta.copy_(t[f"{name}.grft_delta"])
    with torch.no_grad():
        out = merged_copy(adapted).generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=6, do_sample=False, pad_token_id=0,  # stops at the end-of-sequence token too
        )  # fmt: skip
    assert served.modules == tuple(adapter.modules)
    assert list(got) == [int(x) for x in out[0, len(prompt) :]]
    assert got != base  # training changed the answer
