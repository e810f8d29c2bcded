"""Tiny causal LMs and chat data for the language-model tests: built here, in seconds, offline."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

# A ChatML-style template, written for these tests: every turn is "<|im_start|>role\ncontent<|im_end|>\n".
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "one", "two"]


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on the test vocabulary, with the chat template above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [" ".join(WORDS), "system user assistant say repeat please", "\n".join(WORDS)] * 20
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama_folder(folder: Path, *, seed: int = 0) -> Path:
    """A random-init 2-layer LLaMA (hidden 32) with the tiny tokenizer, saved as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def chat_lines(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Conversations with a learnable rule: the assistant repeats the user's word twice."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        first, second = rng.choice(WORDS), rng.choice(WORDS)
        lines.append(
            {
                "messages": [
                    {"role": "system", "content": "repeat"},
                    {"role": "user", "content": f"say {first}"},
                    {"role": "assistant", "content": f"{first} {first}"},
                    {"role": "user", "content": f"say {second}"},
                    {"role": "assistant", "content": f"{second} {second}"},
                ]
            }
        )
    return lines


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One JSON value per line."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def chitchat_rows(count: int, *, max_turns: int = 6) -> list[dict[str, Any]]:
    """The first ``count`` chitchat-dataset conversations with a reply, in chat format: the two
    speakers' turns become user and assistant messages (the file is read, the package never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("chitchat_dataset")
    assert spec is not None
    assert spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    conversations = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    rows: list[dict[str, Any]] = []
    for key in sorted(conversations):
        turns = conversations[key]["messages"][:max_turns]
        if len(turns) < 2:  # a greeting nobody answered: nothing for the assistant to learn
            continue
        if len(rows) == count:
            break
        messages = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(u["text"] for u in turn)}
            for i, turn in enumerate(turns)
        ]
        rows.append({"messages": messages})
    return rows
