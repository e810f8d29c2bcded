"""The built-in SmolLM2-135M-Instruct: converted from its 4-bit GGUF into the store on first use (once,
atomically), loaded back quickly, coherent in a short greedy generation; its real chat template gives
assistant-only labels; a short GRFT run on chitchat conversations lowers the validation loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grft_core.data.chat import ChatData, parse_chat_line
from grft_core.data.chat_tokens import IGNORE_INDEX, encode_chat_data, encode_example
from grft_core.method.config import GRFTConfig
from grft_core.models.registry import ModelRegistry
from grft_core.pipeline import train_to_folder
from tests.lm.helpers import chitchat_rows, write_jsonl

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """A store of its own, where the test converts the model (about a minute)."""
    registry = ModelRegistry(tmp_path_factory.mktemp("smol-store"))
    registry.get(NAME)
    return registry


def test_conversion_is_stored_once_and_generates(smol: ModelRegistry) -> None:
    spec = smol.get(NAME)
    folder = Path(spec.config_dir or "")
    assert (spec.kind, spec.arch, spec.num_params) == ("causal_lm", "LlamaForCausalLM", 134_515_008)
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".smol")) == []
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    weights = Path(spec.weights)
    before = weights.stat().st_mtime_ns
    assert ModelRegistry(smol.store_dir).get(NAME) == spec
    assert weights.stat().st_mtime_ns == before  # not converted again

    model, tokenizer, _ = smol.load_causal_lm(NAME)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply, reply


def test_real_chat_template_labels_the_assistant_only(smol: ModelRegistry) -> None:
    _, tokenizer, _ = smol.load_causal_lm(NAME)
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello there"},
            {"role": "user", "content": "how are you?"},
            {"role": "assistant", "content": "fine, thanks"},
        ]
    }
    encoded = encode_example(parse_chat_line(row, "t", "line 1")[1], tokenizer, 512)
    text = tokenizer.decode(encoded.input_ids)
    labelled = tokenizer.decode(
        [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != IGNORE_INDEX]
    )

    # SmolLM2's template adds its default system prompt; none of it, nor the user turns, is a label.
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert labelled == "hello there<|im_end|>\nfine, thanks<|im_end|>\n"
    data = ChatData("chat", "chitchat", [parse_chat_line(r, "c", "l")[1] for r in chitchat_rows(50)])
    items, stats = encode_chat_data(data, tokenizer, 512)
    assert stats["examples"] == 50
    assert 0 < stats["target_tokens"] < stats["tokens"] / 2


def test_short_grft_run_on_chitchat(smol: ModelRegistry, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", chitchat_rows(24, max_turns=4))
    config = GRFTConfig(k=2, epochs=1, batch_size=4, lr=2e-3, max_length=96, selection_samples=8, seed=0)
    metrics = train_to_folder(NAME, str(train), tmp_path / "adapter", config, registry=smol)

    assert metrics["history"][0]["val_loss"] < 6.0
    assert metrics["trainable_params"] == 30 * 2 * (6 * 576 + 1536)  # 30 layers, 2 rows of each matrix
    assert metrics["trained_tokens"] > 0
