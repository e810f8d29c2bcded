"""Time and memory of one training step: GRFT against full fine-tuning and the other baselines.

What is measured
----------------
One optimisation step (``zero_grad``, forward, cross-entropy, backward, ``Adam.step``) of classifiers
whose backbones are built from configs with random weights (``bench.common.build_model``), since the
cost of a step does not depend on the weights' values:

* ``vit``: ``vit_base_patch16_224`` from timm (ViT-B/16) plus a 768→10 linear head, on random images;
* ``bert``: ``BertModel(BertConfig())`` (BERT-base, no pooler), mean pooling and a 768→2 head;
* ``llama``: transformers ``LlamaModel`` of the LLaMA-3.2-1B shape (hidden 2048, intermediate 8192,
  32 heads, 8 KV heads, vocab 128,256, tied embeddings) cut to ``--llama-layers`` decoder layers
  (default 2) at full width, mean pooling and a 2048→2 head. Its eligible matrices are the seven Linear
  layers of every decoder layer; the embedding is not one.

Every method starts from a deep copy of the same initial model and sees the same batch:

* ``full``: every parameter trains;
* ``linear_probe``: only the head trains;
* ``masked_dense``: the paper's formulation (``apply_masked_dense``): the selected matrices train whole,
  their gradients multiplied by a mask;
* ``gps``: GPS-style element-wise selection (``method.gps.apply_gps``): ``--gps-per-row`` entries per
  row, the matrices trained whole through masked gradients, like ``masked_dense``;
* ``lora``: PEFT LoRA of rank ``--lora-rank`` (8) on the same eligible matrices;
* ``lora_matched``: PEFT LoRA whose rank r makes its trainable count closest to GRFT's rows
  (``r = round(Σ k·in / Σ (in + out))``, at least 1; the chosen r is in the report);
* ``grft``: ``apply_grft`` with k rows per eligible matrix, the same rows ``masked_dense`` uses;
* ``grft_cols``: ``apply_grft`` with k columns per eligible matrix.

Rows, columns and GPS entries are a seeded random choice per matrix: selecting them is a one-off pass
before training (``bench.selection_pass`` times it), not part of a step. The L2 term toward the
pre-trained weights is left out of every method; for GRFT it is a sum of squares over k·in numbers per
matrix, and for masked-dense/GPS leaving it out only makes the baseline faster, so the comparison does
not flatter GRFT. For ``llama`` the frozen embedding is shared between the copies of every method but
``full`` (a copy is 1 GB); nothing writes to it.

Why interleaved
---------------
The machine is shared and its speed drifts over minutes. After ``--warmup`` steps each, the methods run
in turns (A B C D, A B C D, ...) for R rounds, so every round sees roughly the same conditions, and the
ratios are taken between steps of the same round before their median is reported.

Memory
------
``grad_opt_bytes`` is exact: the bytes of every ``.grad`` plus every tensor in Adam's state after a
step. Peak memory is measured by running each method alone in a fresh process (``--method X
--peak-only``): three steps, then on CPU the process's peak RSS (``VmHWM``, reset after the build)
minus the resident size after building the model and the batch, on CUDA ``max_memory_allocated`` after
``reset_peak_memory_stats`` minus what was allocated after the build. Either way: activations kept for
the backward, gradients, optimizer state, masks and temporaries.

CUDA
----
``--device cuda`` builds the models on the GPU, runs forward and loss under bf16 autocast (as
``grft_core.method.trainer`` does; weights, gradients and Adam state stay fp32) and calls
``torch.cuda.synchronize`` before and after every timed step.

Usage::

    uv run --frozen python -m bench.step_time [--models vit,bert,llama] [--rounds 5] [--batch 8]
        [--quick] [--tiny] [--device cpu|cuda] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bench.common import (
    MODELS,
    ROOT,
    PeakProbe,
    Shape,
    add_common_args,
    autocast,
    build_model,
    command_line,
    machine_info,
    mib,
    ratio_summary,
    setup_torch,
    summarize,
    sync,
    write_report,
)
from grft_core import GRFTConfig
from grft_core.method import (
    HEAD,
    apply_gps,
    apply_grft,
    apply_masked_dense,
    count_parameters,
    eligible_modules,
    freeze,
    inject_lora,
    weight_matrix_shape,
)

METHODS = ("full", "linear_probe", "masked_dense", "gps", "lora", "lora_matched", "grft", "grft_cols")
GRFT_METHODS = ("grft", "grft_cols")
#: GRFT step time over each baseline's, at most (the issue's targets on this CPU).
TARGETS = {"full": 0.75, "masked_dense": 0.65, "lora": 0.9}
PEAK_STEPS = 3


@dataclass(frozen=True)
class Settings:
    """Everything that decides what one step computes; forwarded to the peak-memory subprocesses."""

    batch: int
    image_size: int
    seq_len: int
    tiny: bool
    llama_layers: int = 2
    k: int = 1
    lora_rank: int = 8
    gps_per_row: int = 1
    seed: int = 0
    lr: float = 1e-4
    device: str = "cpu"

    @property
    def shape(self) -> Shape:
        return Shape(self.batch, self.image_size, self.seq_len, self.tiny, self.llama_layers)


def random_indices(model: nn.Module, axis: str, k: int, seed: int) -> dict[str, Tensor]:
    """A seeded random choice of ``k`` rows or columns for every eligible matrix."""
    g = torch.Generator().manual_seed(seed + (0 if axis == "rows" else 1))
    chosen: dict[str, Tensor] = {}
    for name, module in eligible_modules(model).items():
        out_dim, in_dim = weight_matrix_shape(module)
        limit = out_dim if axis == "rows" else in_dim
        chosen[name] = torch.randperm(limit, generator=g)[:k].sort().values
    return chosen


def random_entries(model: nn.Module, per_row: int, seed: int) -> dict[str, Tensor]:
    """A seeded random choice of ``per_row`` columns in every row of every eligible matrix (GPS layout)."""
    g = torch.Generator().manual_seed(seed + 2)
    chosen: dict[str, Tensor] = {}
    for name, module in eligible_modules(model).items():
        out_dim, in_dim = weight_matrix_shape(module)
        chosen[name] = torch.rand(out_dim, in_dim, generator=g).topk(per_row, dim=1).indices.sort(1).values
    return chosen


def matched_lora_rank(model: nn.Module, k: int) -> int:
    """The LoRA rank whose trainable count is closest to GRFT's k rows per eligible matrix."""
    shapes = [weight_matrix_shape(m) for m in eligible_modules(model).values()]
    grft = sum(k * i for _, i in shapes)
    per_rank = sum(o + i for o, i in shapes)
    return max(1, round(grft / per_rank))


def _deepcopy(base: nn.Module, method: str) -> nn.Module:
    # Only full fine-tuning trains the (large, for LLaMA) token embedding; the others share it.
    memo: dict[int, Any] = {}
    if method != "full":
        for module in base.modules():
            if isinstance(module, nn.Embedding) and module.weight.numel() > 10_000_000:
                memo[id(module.weight)] = module.weight
    return copy.deepcopy(base, memo)


def prepare(base: nn.Module, method: str, s: Settings, *, fresh: bool) -> tuple[nn.Module, dict[str, Any]]:
    """``base`` (or a copy of it when ``fresh``) made ready for ``method``, in train mode, and notes."""
    rows = random_indices(base, "rows", s.k, s.seed)
    model = _deepcopy(base, method) if fresh else base
    notes: dict[str, Any] = {}
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "linear_probe":
        freeze(model)
        for p in getattr(model, HEAD).parameters():
            p.requires_grad_(True)
    elif method == "masked_dense":
        apply_masked_dense(model, rows, "rows")
    elif method == "gps":
        apply_gps(model, random_entries(model, s.gps_per_row, s.seed))
        notes["gps_per_row"] = s.gps_per_row
    elif method in ("lora", "lora_matched"):
        rank = s.lora_rank if method == "lora" else matched_lora_rank(model, s.k)
        inject_lora(model, GRFTConfig(method="lora", lora_rank=rank))
        notes["lora_rank"] = rank
    elif method == "grft":
        apply_grft(model, rows, "rows")
    elif method == "grft_cols":
        apply_grft(model, random_indices(model, "columns", s.k, s.seed), "columns")
    else:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    # The same mode for every method: dropout (BERT's 0.1) costs the same everywhere.
    model.train()
    return model, notes


class Runner:
    """One method's model and Adam optimizer; ``step`` runs and times one training step."""

    def __init__(self, model: nn.Module, lr: float, device: str) -> None:
        self.model = model
        self.device = device
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(self, x: Tensor, y: Tensor) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        sync(self.device)
        return time.perf_counter() - start

    def state_bytes(self) -> dict[str, int]:
        """Exact bytes of the gradients and of Adam's state as they stand after a step."""
        grad = sum(
            p.grad.numel() * p.grad.element_size() for p in self.model.parameters() if p.grad is not None
        )
        opt = sum(
            v.numel() * v.element_size()
            for state in self.optimizer.state.values()
            for v in state.values()
            if isinstance(v, Tensor)
        )
        return {"grad_bytes": grad, "opt_bytes": opt, "grad_opt_bytes": grad + opt}


def time_methods(
    name: str, methods: Sequence[str], s: Settings, rounds: int, warmup: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Interleaved step times and exact gradient/optimizer bytes of every method on one model."""
    base, x, y, info = build_model(name, s.shape, seed=s.seed, device=s.device)
    runners: dict[str, Runner] = {}
    notes: dict[str, dict[str, Any]] = {}
    for m in methods:
        model, notes[m] = prepare(base, m, s, fresh=True)
        runners[m] = Runner(model, s.lr, s.device)
    del base
    for runner in runners.values():
        for _ in range(warmup):
            runner.step(x, y)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            # Collect outside the timed region, so a cycle collection never lands inside one method's step.
            gc.collect()
            times[m].append(runners[m].step(x, y))
    results: dict[str, Any] = {}
    for m, runner in runners.items():
        trainable, total = count_parameters(runner.model)
        results[m] = {
            "step_s": summarize(times[m]),
            "trainable_params": trainable,
            "total_params": total,
            **notes[m],
            **runner.state_bytes(),
        }
    return info, results


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Per-round ratios of each GRFT variant's step time to every other method's, median and spread."""
    out: dict[str, Any] = {}
    for g in GRFT_METHODS:
        if g not in results:
            continue
        for b in results:
            if b in GRFT_METHODS:
                continue
            summary = ratio_summary(results[g]["step_s"]["values"], results[b]["step_s"]["values"])
            target = TARGETS.get(b)
            out[f"{g}/{b}"] = {
                **summary,
                "target": target,
                "met": None if target is None else summary["median"] <= target,
            }
    return out


def settings_args(s: Settings) -> list[str]:
    """The CLI flags that rebuild ``s`` in a subprocess."""
    args = ["--batch", str(s.batch), "--image-size", str(s.image_size), "--seq-len", str(s.seq_len)]
    args += ["--k", str(s.k), "--lora-rank", str(s.lora_rank), "--gps-per-row", str(s.gps_per_row)]
    args += ["--llama-layers", str(s.llama_layers), "--seed", str(s.seed), "--lr", str(s.lr)]
    args += ["--device", s.device]
    return args + (["--tiny"] if s.tiny else [])


def measure_peak(name: str, method: str, s: Settings) -> dict[str, Any]:
    """Run ``--peak-only`` for one model and method in a fresh interpreter and return its JSON."""
    cmd = [sys.executable, "-m", "bench.step_time", "--models", name, "--method", method, "--peak-only"]
    cmd += ["--threads", str(torch.get_num_threads())]
    proc = subprocess.run(
        cmd + settings_args(s), cwd=ROOT, capture_output=True, text=True, check=False, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peak run {name}/{method} failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def peak_only(name: str, method: str, s: Settings) -> dict[str, Any]:
    """Build, take ``PEAK_STEPS`` steps of one method, report peak memory above the built model."""
    base, x, y, _ = build_model(name, s.shape, seed=s.seed, device=s.device)
    gc.collect()
    probe = PeakProbe(s.device)
    model, _ = prepare(base, method, s, fresh=False)
    runner = Runner(model, s.lr, s.device)
    for _ in range(PEAK_STEPS):
        runner.step(x, y)
    peak = probe.result()
    return {
        "model": name,
        "method": method,
        "steps": PEAK_STEPS,
        "after_build_bytes": peak["base_bytes"],
        "hwm_bytes": peak["hwm_bytes"],
        "peak_source": peak["source"],
        "peak_bytes": peak["peak_bytes"],
    }


def profile_step(name: str, method: str, s: Settings, warmup: int, rows_limit: int = 30) -> str:
    """A torch.profiler table (CPU ops by self time) of one step after ``warmup`` steps."""
    from torch.profiler import ProfilerActivity, profile

    base, x, y, _ = build_model(name, s.shape, seed=s.seed, device=s.device)
    model, _ = prepare(base, method, s, fresh=False)
    runner = Runner(model, s.lr, s.device)
    for _ in range(warmup):
        runner.step(x, y)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        runner.step(x, y)
    # By operator first (where the time goes), then by operator and shape (which matrices it is).
    averages = prof.key_averages()
    by_shape = prof.key_averages(group_by_input_shape=True)
    tables = [t.table(sort_by="self_cpu_time_total", row_limit=rows_limit) for t in (averages, by_shape)]
    return "\n".join(str(t) for t in tables)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: per model, step times and memory per method, then the ratios."""
    lines: list[str] = []
    for name, entry in report["models"].items():
        info = entry["info"]
        lines += [
            f"#### {name}: {info['arch']}, {info['params'] / 1e6:.1f} M params, "
            f"{info['eligible_matrices']} eligible matrices; batch {info['input']}",
            "",
            "| method | step ms, median | min–max | IQR | trainable params | grad + Adam state "
            "| peak memory |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m, r in entry["methods"].items():
            t = r["step_s"]
            peak = r.get("peak_bytes")
            label = m + (f" (r={r['lora_rank']})" if "lora_rank" in r else "")
            lines.append(
                f"| {label} | {t['median'] * 1e3:,.1f} | {t['min'] * 1e3:,.1f}–{t['max'] * 1e3:,.1f} "
                f"| {t['q1'] * 1e3:,.1f}–{t['q3'] * 1e3:,.1f} | {r['trainable_params']:,} "
                f"| {mib(r['grad_opt_bytes'])} ({r['grad_opt_bytes']:,} B) "
                f"| {mib(peak) if peak is not None else 'n/a'} |"
            )
        lines += [
            "",
            "| ratio (per round) | median | min–max | IQR | fastest / fastest | target | met (median) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for key, r in entry["ratios"].items():
            target = "" if r["target"] is None else f"≤ {r['target']}"
            met = "" if r["met"] is None else ("yes" if r["met"] else "no")
            lines.append(
                f"| {key} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {r['q1']:.3f}–{r['q3']:.3f} "
                f"| {r['ratio_of_min']:.3f} | {target} | {met} |"
            )
        methods = entry["methods"]
        for g in GRFT_METHODS:
            for other in ("lora", "lora_matched", "masked_dense", "full"):
                if g in methods and other in methods:
                    gb, ob = methods[g]["grad_opt_bytes"], methods[other]["grad_opt_bytes"]
                    lines.append(f"| {g} grad + Adam bytes / {other}'s | {gb / ob:.3f} | | | | | |")
                    if "peak_bytes" in methods[g] and "peak_bytes" in methods[other]:
                        gp, op = methods[g]["peak_bytes"], methods[other]["peak_bytes"]
                        lines.append(f"| {g} peak memory / {other}'s | {gp / max(op, 1):.3f} | | | | | |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.step_time", description=__doc__.split("\n")[0])
    add_common_args(p, "step_time")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: vit, bert, llama")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, timed in this order")
    p.add_argument("--rounds", type=int, default=None, help="default 5 (3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="default 2 (1 with --quick or --tiny)")
    p.add_argument("--batch", type=int, default=None, help="default 8 (2 with --quick or --tiny)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (32 with --tiny)")
    p.add_argument("--seq-len", type=int, default=None, help="default 128 (64 --quick, 16 --tiny)")
    p.add_argument("--llama-layers", type=int, default=2, help="decoder layers of the LLaMA-1B shape")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--gps-per-row", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--no-peak", action="store_true", help="skip the per-method peak-memory subprocesses")
    p.add_argument("--method", help="with --peak-only: the one method to run")
    p.add_argument("--peak-only", action="store_true", help="print one method's peak memory as JSON")
    p.add_argument("--profile", help="comma-separated methods: print a torch.profiler table of one step")
    args = p.parse_args(argv)
    if args.peak_only and (args.method is None or "," in args.models):
        p.error("--peak-only needs --method and exactly one model in --models")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    setup_torch(args.threads)
    s = Settings(
        batch=args.batch or (2 if args.tiny or args.quick else 8),
        image_size=args.image_size or (32 if args.tiny else 224),
        seq_len=args.seq_len or (16 if args.tiny else 64 if args.quick else 128),
        tiny=args.tiny,
        llama_layers=args.llama_layers,
        k=args.k,
        lora_rank=args.lora_rank,
        gps_per_row=args.gps_per_row,
        seed=args.seed,
        lr=args.lr,
        device=args.device,
    )
    warmup = args.warmup if args.warmup is not None else (1 if args.quick or args.tiny else 2)
    rounds = args.rounds or (3 if args.quick or args.tiny else 5)
    # --quick is for a look at the ratios: the peak-memory subprocesses belong to the full run.
    no_peak = args.no_peak or args.quick
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.peak_only:
        print(json.dumps(peak_only(models[0], args.method, s)))
        return None
    if args.profile:
        for name in models:
            for method in args.profile.split(","):
                print(f"## {name} / {method}\n{profile_step(name, method, s, warmup)}")
        return None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report: dict[str, Any] = {
        "command": command_line("bench.step_time", argv),
        "machine": machine_info(args.device),
        "settings": {**asdict(s), "rounds": rounds, "warmup": warmup, "methods": methods},
        "models": {},
    }
    for name in models:
        # Other processes on a shared machine slow every method; the load averages show how busy it was.
        load_before = os.getloadavg()
        info, results = time_methods(name, methods, s, rounds, warmup)
        info["loadavg_before"], info["loadavg_after"] = load_before, os.getloadavg()
        # The timing copies are freed before the subprocesses start, so they do not compete for memory.
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        if not no_peak:
            for m in methods:
                peak = measure_peak(name, m, s)
                results[m].update({k: v for k, v in peak.items() if k not in ("model", "method")})
        report["models"][name] = {"info": info, "methods": results, "ratios": ratios(results)}
    write_report(report, args.json, markdown(report))
    return report


if __name__ == "__main__":
    main()
