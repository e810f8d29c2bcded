"""A tiny LLaMA-shaped causal LM, a byte-level tokenizer with a chat template, and GRFT adapters of it,
all built here from configs and seeds (nothing downloaded)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from grft_core.adapters.format import Adapter, adapter_tensors, merged_copy
from grft_core.method.model import apply_grft

#: ChatML-style turns, the layout SmolLM2's template also uses.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello there, how are you today? I am fine, thank you.",
    "once upon a time a small model learned to talk about cats and dogs",
    "user assistant system: answer briefly and stop when done.",
    "numbers 0 1 2 3 4 5 6 7 8 9 and punctuation !?.,;:'\"()[]{}",
]


def tiny_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(tokenizer: Any, *, seed: int = 0, context: int = 256) -> LlamaForCausalLM:
    """A random 2-layer LLaMA (hidden 32) for ``tokenizer``'s vocabulary, fp32, eval mode."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval()


def linear_names(model: nn.Module) -> list[str]:
    """The Linear layers inside the decoder layers (never embeddings or lm_head)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]


def lm_adapter(
    model: nn.Module, *, seed: int, k: int = 3, axis: str = "rows", scale: float = 0.5, base: str = "tiny-lm"
) -> tuple[Adapter, nn.Module]:
    """A GRFT adapter of ``model`` with seeded random rows, and a copy of the model with it merged."""
    g = torch.Generator().manual_seed(seed)
    adapted = copy.deepcopy(model)
    indices = {}
    for name in linear_names(adapted):
        out_dim, in_dim = adapted.get_submodule(name).weight.shape
        width = out_dim if axis == "rows" else in_dim
        indices[name] = torch.randperm(width, generator=g)[:k].sort().values
    layers = apply_grft(adapted, indices, axis, train_bias=False)  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in layers.values():
            layer.grft_delta.copy_(torch.randn(layer.grft_delta.shape, generator=g) * scale)
    tensors = adapter_tensors_no_head(adapted)
    shapes = {n: list(adapted.get_submodule(n).base_layer.weight.shape) for n in indices}
    config = {
        "format": "grft-adapter", "format_version": 1, "method": "grft", "task": "causal_lm",
        "base_model": base, "axis": axis, "k": k, "modules": {n: {"shape": s} for n, s in shapes.items()},
    }  # fmt: skip
    return Adapter(config=config, tensors=tensors), merged_copy(adapted)


def adapter_tensors_no_head(model: nn.Module) -> dict[str, torch.Tensor]:
    """``adapter_tensors`` for a model without a classifier head."""
    try:
        return adapter_tensors(model, "grft")
    except AttributeError:  # a library without head-less adapters: collect the rows directly
        from grft_core.method.model import grft_layers

        out = {}
        for name, layer in grft_layers(model).items():
            out[f"{name}.grft_indices"] = layer.grft_indices.to(torch.int32)
            out[f"{name}.grft_delta"] = layer.grft_delta.detach().clone()
        return out
