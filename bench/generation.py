"""Generation with many GRFT adapters in one batch: tokens/s and latency against the base and PEFT.

What is measured
----------------
In one process, one batch of ``--batch`` (32) chat requests (prompts rendered with the model's chat
template, 20-30 tokens), each generating exactly ``--tokens`` tokens greedily (end-of-sequence ignored,
so every method produces the same number of tokens), on SmolLM2-135M-Instruct from the model registry
(``smollm2-135m-instruct``, converted from its GGUF on first use) or, with ``--config-model`` or when
the registry cannot give it, a LLaMA model of SmolLM2's shape built from a config with random weights:

* ``hf_base``: transformers ``generate`` on the plain base model, the batch left-padded: the base model
  alone, the headline denominator;
* ``engine_base``: ``GenerationEngine`` (``grft_core.serving.generation``) with no adapter on any item;
* ``grft_N``: the engine with item i using GRFT adapter ``i mod N``, N = 1, 8, 32 distinct adapters
  (``--k`` random rows of every Linear inside the decoder layers, random deltas), all in one batch:
  every decoding step is one forward for all items;
* ``peft_N``: PEFT LoRA on the same matrices (a copy of the base), N adapters with random nonzero A and
  B, at the rank whose trainable count is closest to GRFT's per adapter, run through PEFT's
  mixed-adapter ``generate(..., adapter_names=[...])``.

Every method runs once per round, the order rotated each round, after a warm-up round. Throughput =
generated tokens / wall time of the batch; latency = per request, submission to last token (for
``generate``, every request ends with the batch) and, for the engine, time to the first token. Ratios
are per round, then summarised (median, min-max).

Before timing, the engine's greedy tokens for one item of a mixed batch are checked against transformers'
``generate`` on a copy of the base with that item's adapter merged (fp32; on a bf16 GPU the agreement is
recorded instead of asserted), so a broken path cannot post a flattering number.

Usage::

    uv run --frozen python -m bench.generation [--batch 32] [--tokens 32] [--rounds 2] [--warmup 1]
        [--config-model] [--quick] [--tiny] [--threads 1] [--device cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bench.common import add_common_args, command_line, machine_info, ratio_summary, setup_torch, write_report
from grft_core import ModelRegistry
from grft_core.adapters import Adapter, merged_copy
from grft_core.method import apply_grft
from grft_core.serving.generation import GenerationEngine
from grft_core.serving.generation_sampling import SamplingParams

SMOLLM2 = "smollm2-135m-instruct"
#: SmolLM2-135M's shape (its GGUF's config), for the config-built fallback.
SMOLLM2_SHAPE: dict[str, Any] = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "max_position_embeddings": 8192, "tie_word_embeddings": True,
    "rope_theta": 100_000.0,
}  # fmt: skip
ADAPTER_COUNTS = (1, 8, 32)
TOPICS = ["cats", "the sea", "music", "trains", "bread", "rain", "chess", "stars", "tea", "rivers", "maps"]


def tiny_tokenizer() -> Any:
    """A byte-level BPE with ChatML turns, trained here on a few sentences (for the config-built model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator([f"tell me about {t}, briefly please." for t in TOPICS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def load_model(args: argparse.Namespace) -> tuple[nn.Module, Any, str]:
    """SmolLM2 from the registry, else a LLaMA of its shape (tiny under ``--tiny``) from a config."""
    if not args.config_model and not args.tiny:
        try:
            model, tokenizer, _ = ModelRegistry().load_causal_lm(SMOLLM2)
            return model.float().eval(), tokenizer, SMOLLM2
        except Exception as exc:  # any failure to get the real model: fall back, and say so
            print(f"SmolLM2 unavailable ({exc}); using a config-built model of its shape", file=sys.stderr)
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    shape = dict(SMOLLM2_SHAPE)
    if args.tiny:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)  # fmt: skip
    config = LlamaConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.float().eval(), tokenizer, "llama-smollm2-shape" + ("-tiny" if args.tiny else "")


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside the decoder layers: the matrices GRFT (and LoRA here) adapt."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}


def grft_adapter(model: nn.Module, seed: int, k: int, base: str) -> Adapter:
    """A GRFT adapter with seeded random rows and deltas of every decoder Linear (no head)."""
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    modules = {}
    for name, linear in decoder_linears(model).items():
        out_dim, in_dim = linear.weight.shape
        tensors[f"{name}.grft_indices"] = (
            torch.randperm(out_dim, generator=g)[:k].sort().values.to(torch.int32)
        )
        tensors[f"{name}.grft_delta"] = torch.randn(k, in_dim, generator=g) * 0.02
        modules[name] = {"shape": [out_dim, in_dim]}
    config = {"format": "grft-adapter", "format_version": 1, "method": "grft", "task": "causal_lm",
              "base_model": base, "axis": "rows", "k": k, "modules": modules}  # fmt: skip
    return Adapter(config=config, tensors=tensors)


def matched_rank(model: nn.Module, k: int) -> int:
    """The LoRA rank whose trainable count is closest to GRFT's k rows per matrix."""
    linears = decoder_linears(model).values()
    grft = sum(k * m.in_features for m in linears)
    per_rank = sum(m.in_features + m.out_features for m in linears)
    return max(1, round(grft / per_rank))


def peft_model(model: nn.Module, n: int, rank: int) -> nn.Module:
    """PEFT LoRA, ``n`` adapters of random nonzero A and B on the decoder Linears, on a copy of ``model``."""
    from peft import LoraConfig, get_peft_model

    targets = sorted({name.rsplit(".", 1)[1] for name in decoder_linears(model)})
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0)
    wrapped = get_peft_model(copy.deepcopy(model), config, adapter_name="a0")
    for i in range(1, n):
        wrapped.add_adapter(f"a{i}", config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:  # PEFT's default B = 0 would make every adapter a no-op
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return wrapped.eval()


def prompts(tokenizer: Any, batch: int) -> list[list[int]]:
    """``batch`` chat prompts of slightly different lengths."""
    out = []
    for i in range(batch):
        topic = TOPICS[i % len(TOPICS)]
        text = f"Tell me about {topic}" + " please" * (i % 4) + "."
        messages = [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(list(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
    return out


def left_padded(batch: Sequence[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def hf_generate(
    model: Any, batch: Sequence[list[int]], tokens: int, device: torch.device, **extra: Any
) -> Any:
    ids, mask = left_padded(batch, device)
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens,
                              min_new_tokens=tokens, do_sample=False, pad_token_id=0, **extra)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_generate(run: Callable[[], Any], n: int, tokens: int, device: torch.device) -> dict[str, Any]:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens_per_s": n * tokens / seconds,
        "latency_s": [seconds] * n,
        "ttft_s": None,
    }


def timed_engine(
    engine: GenerationEngine, batch: Sequence[list[int]], ids: Sequence[str | None], tokens: int
) -> dict[str, Any]:
    """Submit the whole batch at once; per request, time to first text and to the end."""
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    first: list[float] = [0.0] * len(batch)
    last: list[float] = [0.0] * len(batch)
    start = time.perf_counter()
    handles = [engine.submit(p, a, params) for p, a in zip(batch, ids, strict=True)]

    def read(i: int) -> None:
        for _ in handles[i]:
            if not first[i]:
                first[i] = time.perf_counter() - start
        handles[i].result()
        last[i] = time.perf_counter() - start
        first[i] = first[i] or last[i]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = max(last)
    return {
        "seconds": seconds,
        "tokens_per_s": len(batch) * tokens / seconds,
        "latency_s": last,
        "ttft_s": first,
    }


def check_equivalence(
    engine: GenerationEngine,
    model: nn.Module,
    adapter: Adapter,
    batch: Sequence[list[int]],
    device: torch.device,
) -> dict[str, Any]:
    """Greedy tokens of item 0 (adapter ``a0``) in a mixed batch vs the merged model's ``generate`` alone."""
    tokens = 8
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    handles = [
        engine.submit(p, "a0" if i == 0 else ("a1" if i % 2 else None), params)
        for i, p in enumerate(batch[:4])
    ]
    got = list(handles[0].result().token_ids)
    for h in handles[1:]:
        h.result()
    adapted = copy.deepcopy(model)
    t = adapter.tensors
    layers = apply_grft(
        adapted, {m: t[f"{m}.grft_indices"].long() for m in adapter.modules}, "rows", train_bias=False
    )
    with torch.no_grad():
        for name, layer in layers.items():
            layer.grft_delta.copy_(t[f"{name}.grft_delta"])
    merged = merged_copy(adapted).to(device, engine.dtype)
    want = [int(x) for x in hf_generate(merged, [batch[0]], tokens, device)[0, len(batch[0]) :]]
    agree = sum(a == b for a, b in zip(got, want, strict=True)) / tokens
    return {"engine": got, "merged_generate": want, "agreement": agree}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.split("\n")[0])
    add_common_args(p, "generation")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--config-model", action="store_true", help="a config-built model of SmolLM2's shape")
    args = p.parse_args(argv)
    setup_torch(args.threads)
    if args.tiny:
        args.batch, args.tokens, args.rounds, args.warmup = 32, 4, 1, 0
    elif args.quick:
        args.tokens, args.rounds = 16, 1
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    model, tokenizer, model_name = load_model(args)
    counts = [n for n in ADAPTER_COUNTS if n <= args.batch]
    adapters = [grft_adapter(model, seed=i, k=args.k, base=model_name) for i in range(max(counts))]
    rank = matched_rank(model, args.k)
    batch = prompts(tokenizer, args.batch)
    base = copy.deepcopy(model).to(device, dtype).eval()
    engine = GenerationEngine(
        copy.deepcopy(model), tokenizer, device=device, dtype=dtype, max_batch=args.batch
    )
    engine.eos_ids = frozenset()  # every request makes exactly --tokens tokens, as generate's min_new_tokens
    for i, adapter in enumerate(adapters):
        engine.add(f"a{i}", adapter)
    check = check_equivalence(engine, model, adapters[0], batch, device)
    if dtype == torch.float32 and check["agreement"] < 1.0:
        raise SystemExit(f"engine and merged generate disagree: {check}")
    peft_models = {n: peft_model(model, n, rank).to(device, dtype) for n in counts}

    methods: dict[str, Callable[[], dict[str, Any]]] = {
        "hf_base": lambda: timed_generate(
            lambda: hf_generate(base, batch, args.tokens, device), len(batch), args.tokens, device
        ),  # fmt: skip
        "engine_base": lambda: timed_engine(engine, batch, [None] * len(batch), args.tokens),
    }
    for n in counts:
        ids = [f"a{i % n}" for i in range(len(batch))]
        methods[f"grft_{n}"] = lambda ids=ids: timed_engine(engine, batch, ids, args.tokens)  # type: ignore[misc]
        names = [f"a{i % n}" for i in range(len(batch))]
        methods[f"peft_{n}"] = lambda n=n, names=names: timed_generate(  # type: ignore[misc]
            lambda: hf_generate(peft_models[n], batch, args.tokens, device, adapter_names=names),
            len(batch), args.tokens, device,
        )  # fmt: skip

    order = list(methods)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
    for r in range(args.warmup + args.rounds):
        shift = r % len(order)
        for m in order[shift:] + order[:shift]:
            result = methods[m]()
            if r >= args.warmup:
                runs[m].append(result)
            print(f"round {r} {m}: {result['tokens_per_s']:.1f} tokens/s", file=sys.stderr, flush=True)
    engine.close()

    summary: dict[str, Any] = {}
    for m, results in runs.items():
        tps = [x["tokens_per_s"] for x in results]
        lat = [v for x in results for v in x["latency_s"]]
        ttft = [v for x in results if x["ttft_s"] for v in x["ttft_s"]]
        summary[m] = {
            "tokens_per_s": statistics.median(tps),
            "latency_p50_s": statistics.median(lat),
            "latency_max_s": max(lat),
            "ttft_p50_s": statistics.median(ttft) if ttft else None,
            "rounds": results,
        }
    ratios: dict[str, dict[str, Any]] = {}
    for n in counts:
        grft = [x["tokens_per_s"] for x in runs[f"grft_{n}"]]
        ratios[f"grft_{n}/hf_base"] = ratio_summary(grft, [x["tokens_per_s"] for x in runs["hf_base"]])
        ratios[f"grft_{n}/engine_base"] = ratio_summary(
            grft, [x["tokens_per_s"] for x in runs["engine_base"]]
        )
        ratios[f"grft_{n}/peft_{n}"] = ratio_summary(grft, [x["tokens_per_s"] for x in runs[f"peft_{n}"]])
    report = {
        "benchmark": "generation",
        "command": command_line("bench.generation", argv),
        "machine": machine_info(args.device),
        "model": model_name,
        "batch": args.batch,
        "tokens": args.tokens,
        "k": args.k,
        "lora_rank": rank,
        "rounds": args.rounds,
        "equivalence": check,
        "methods": summary,
        "ratios": ratios,
    }
    lines = [
        f"{model_name}, batch {args.batch} x {args.tokens} tokens, {args.device} {dtype}",
        "",
        "| method | tokens/s | latency p50 (s) | first token p50 (s) |",
        "|---|---:|---:|---:|",
    ]
    for m, row in summary.items():
        cell = "" if row["ttft_p50_s"] is None else f"{row['ttft_p50_s']:.2f}"
        lines.append(f"| {m} | {row['tokens_per_s']:.1f} | {row['latency_p50_s']:.2f} | {cell} |")
    lines += ["", "| ratio (per round) | median | min-max |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['median']:.2f} | {v['min']:.2f}-{v['max']:.2f} |" for k, v in ratios.items()]
    write_report(report, args.json, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
