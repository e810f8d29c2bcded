"""Serving many GRFT adapters on one base model: throughput, latency, cold load and warm switch.

What is measured
----------------
In one process, on the same preprocessed batch of 32 items, for each model:

* ``text``: the registry's ``all-minilm-l6-v2`` (real MiniLM-L6 weights, 6 × 384), on 32 BBC News
  articles tokenized to exactly ``--seq-len`` (128) tokens (truncated, or padded with a masked tail);
* ``mobilenet``: the registry's ``mobilenetv2_100`` (real ImageNet weights) on seeded random 224 px
  images (a forward's cost does not depend on pixel values);
* ``vit``: timm ``vit_small_patch16_224`` (ViT-S/16) with random weights, wrapped in a ``Classifier``.

Methods, all timed under ``torch.inference_mode()``, in fp32 on the CPU (``--device cuda``: bf16 on the
GPU, with a synchronize around every timed call):

* ``base``: the plain classifier forward (backbone, pooling, its own head): the headline denominator;
* ``engine_base``: ``ServingEngine.logits`` with every item's adapter ``None``;
* ``grft_N``: ``ServingEngine.logits`` with item i using adapter ``i mod N``, for N = 1, 8, 32 distinct
  adapters. Every adapter is a GRFT adapter with ``--k`` (2) random rows of every eligible matrix
  (Linear and non-grouped Conv2d layers), random nonzero deltas and bias deltas, and its own random head;
* ``peft_rR_N``: PEFT LoRA of rank R on the same matrices (a deep copy of the base), N adapters with
  random nonzero A and B (PEFT's default B = 0 would make them no-ops), run through PEFT's mixed-batch
  inference: ``LoraModel._enable_peft_forward_hooks(adapter_names=[...])``, the context manager that
  ``PeftModel.forward(..., adapter_names=...)`` enters, around the classifier's ``features``. R is the
  rank whose trainable count is closest to GRFT's per adapter (``max(1, round(Σ k·in / Σ (in + out)))``;
  exactly equal for k = 2 on MiniLM, whose matrices have Σ in = Σ out) and also 8. Each item's head
  is applied to the features by the same batched gather the engine uses, so the comparison is about the
  adapter layers.

The methods run in rounds (every method once per round, the order rotated each round) after warm-up
rounds, so the drift of a shared machine hits all of them alike. Per method: p50 and p99 of the batch
latencies (p99 of a handful of rounds is close to the max) and throughput = batch / p50 latency. Ratios
are taken between latencies of the same round, then summarised (median, min–max): ``grft_N/base`` is
GRFT's throughput over the base model's.

Before timing, a mixed batch of two items is checked against each item run alone through its merged
adapter (GRFT) or with its adapter set (PEFT), so a broken path cannot post a flattering number.

Cold load and warm switch (text model)
--------------------------------------
A MiniLM GRFT adapter with k = 1 and k = 8 rows per matrix is saved into an ``domain.artifacts``
``ArtifactStore`` (a local folder). *Cold load* is ``AdapterCache.preload`` on a fresh cache whose
engine already holds the base model (and the 32 benchmark adapters): fetching the folder from the store
into a new temporary folder, ``load_adapter`` and ``ServingEngine.add``; the adapter is evicted after
each of ``--loads`` loads, one untimed load first. *Warm switch* is what serving another, already loaded
adapter costs outside the forward: a cache hit, ``AdapterCache.acquire`` plus ``release``. The forward
itself has nothing to switch: a batch's adapters are one tensor of slot numbers.

Usage::

    uv run --frozen python -m bench.serving [--models text,mobilenet,vit] [--rounds 10] [--k 2]
        [--quick] [--tiny] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.common import (
    add_common_args,
    command_line,
    machine_info,
    ratio_summary,
    setup_torch,
    summarize,
    write_report,
)
from grft_core import ModelRegistry, make_preprocessor
from grft_core.adapters import (
    Adapter,
    adapter_tensors,
    apply_adapter,
    backbone_fingerprint,
    merge,
    save_adapter,
)
from grft_core.data import bbc_news_csv
from grft_core.method import HEAD, apply_grft, eligible_modules, weight_matrix_shape
from grft_core.models import Classifier, create_timm_backbone
from grft_core.serving import AdapterCache, ServingEngine

MODELS = ("text", "mobilenet", "vit")
NUM_LABELS = 4
LORA_RANK = 8
TARGET_VS_BASE = 0.85
TARGET_VS_PEFT = 2.0
TARGET_COLD_S = 0.050


def random_grft_adapter(
    model: Classifier,
    *,
    base_name: str,
    seed: int,
    axis: str = "rows",
    k: int = 2,
    train_bias: bool = True,
    include_depthwise: bool = False,
    scale: float = 0.05,
    image_size: int | None = None,
    max_length: int | None = None,
    fingerprint: str | None = None,
) -> Adapter:
    """A GRFT adapter of ``model`` with seeded random indices, deltas, bias deltas and head, untrained.

    ``model`` (a base classifier whose head has the adapter's label count) is wrapped in place; pass a
    copy. ``fingerprint`` saves hashing the base weights again when the caller knows it.
    """
    fingerprint = fingerprint or backbone_fingerprint(model)
    g = torch.Generator().manual_seed(seed)
    indices = {}
    for name, module in eligible_modules(model, include_depthwise=include_depthwise).items():
        w = module.weight
        limit = w.shape[0] if axis == "rows" else w[0].numel()
        indices[name] = torch.randperm(limit, generator=g)[: min(k, limit)].sort().values
    layers = apply_grft(model, indices, axis, train_bias=train_bias)  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in layers.values():
            layer.grft_delta.copy_(torch.randn(layer.grft_delta.shape, generator=g) * scale)
            if layer.grft_bias is not None:
                layer.grft_bias.copy_(torch.randn(layer.grft_bias.shape, generator=g) * scale)
        head: nn.Linear = getattr(model, HEAD)
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.5)
        head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.5)
    config: dict[str, Any] = {
        "method": "grft",
        "base_model": base_name,
        "base_fingerprint": fingerprint,
        "modality": model.modality,
        "axis": axis,
        "k": k,
        "labels": [f"class-{seed}-{i}" for i in range(head.out_features)],
        "modules": {name: {"k": int(idx.numel())} for name, idx in indices.items()},
        "config": {"image_size": image_size, "max_length": max_length},
        "format": "grft-adapter",
        "format_version": 1,
    }
    return Adapter(config=config, tensors=adapter_tensors(model, "grft"))


# --- models and inputs ---------------------------------------------------------------------------


@dataclass
class Setup:
    """One base model, its benchmark batch and a description of both."""

    name: str
    base_name: str
    model: Classifier
    inputs: dict[str, Tensor]
    info: dict[str, Any]


def _texts(n: int, work: Path) -> list[str]:
    path = bbc_news_csv(work, limit_per_class=math.ceil(n / 5))
    with path.open(newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)][:n]


def build_setup(
    name: str, registry: ModelRegistry, *, tiny: bool, batch: int, seq_len: int, work: Path
) -> Setup:
    """The base classifier and one seeded batch for ``name`` (tiny: the registry's test models).

    Raises:
        ValueError: an unknown model name.
    """
    g = torch.Generator().manual_seed(0)
    if name == "text":
        base = "tiny-bert" if tiny else "all-minilm-l6-v2"
        model, spec = registry.load(base, num_labels=NUM_LABELS)
        inputs = make_preprocessor(spec, max_length=seq_len)(_texts(batch, work))
        pad = seq_len - inputs["input_ids"].shape[1]  # every method sees exactly seq_len positions
        inputs = {k: nn.functional.pad(v, (0, pad)) for k, v in inputs.items()}
        real = int(inputs["attention_mask"].sum())
        desc = f"{batch} BBC News articles × {seq_len} tokens ({real / (batch * seq_len):.0%} real tokens)"
    elif name in ("mobilenet", "vit"):
        if name == "mobilenet" or tiny:
            base = {"mobilenet": "tiny-cnn" if tiny else "mobilenetv2_100", "vit": "tiny-vit"}[name]
            model, _ = registry.load(base, num_labels=NUM_LABELS)
        else:
            base = "vit_small_patch16_224"
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                backbone = create_timm_backbone(base)
            model = Classifier(backbone, modality="image", num_labels=NUM_LABELS).eval()
        size = 32 if base == "tiny-vit" else 64 if tiny else 224
        inputs = {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}
        desc = f"{batch} × 3 × {size} × {size} random images"
    else:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    info = {
        "base": base,
        "input": desc,
        "params": sum(p.numel() for p in model.parameters()),
        "eligible_matrices": len(eligible_modules(model)),
    }
    return Setup(name, base, model, inputs, info)


# --- adapters ------------------------------------------------------------------------------------


def sizes(model: nn.Module, k: int) -> dict[str, int]:
    """Per-adapter trainable counts: GRFT rows (+ bias deltas) and the matched LoRA rank."""
    dims = [weight_matrix_shape(m) for m in eligible_modules(model).values()]
    rows = sum(min(k, out) * fan_in for out, fan_in in dims)
    per_rank = sum(out + fan_in for out, fan_in in dims)
    rank = max(1, round(rows / per_rank))
    return {
        "grft_rows": rows,
        "grft_bias": sum(out for out, _ in dims),
        "lora_per_rank": per_rank,
        "matched_rank": rank,
    }


def build_peft(base: Classifier, rank: int, n: int, seed: int) -> Any:
    """A deep copy of ``base`` with ``n`` PEFT LoRA adapters ``a0``… of rank ``rank``, A and B random."""
    from peft import LoraConfig, get_peft_model

    modules = list(eligible_modules(base))

    def config() -> LoraConfig:
        return LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, lora_dropout=0.0)

    model = get_peft_model(copy.deepcopy(base), config(), adapter_name="a0")
    for i in range(1, n):
        model.add_adapter(f"a{i}", config())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def peft_features(peft_model: Any, inputs: dict[str, Tensor], names: Sequence[str]) -> Tensor:
    """Pooled features of a mixed batch, item i through LoRA adapter ``names[i]``."""
    lora = peft_model.base_model
    with lora._enable_peft_forward_hooks(adapter_names=list(names)):
        out: Tensor = lora.model.features(inputs)
    return out


def gathered_head(features: Tensor, weight: Tensor, bias: Tensor, slots: Tensor) -> Tensor:
    """Each item's own head, gathered by slot, as one batched matmul (the engine's head)."""
    return torch.baddbmm(bias[slots].unsqueeze(2), weight[slots], features.unsqueeze(2)).squeeze(2)


def check_equivalence(
    setup: Setup, engine: ServingEngine, adapters: list[Adapter], peft: dict[int, Any]
) -> None:
    """Two items under two adapters in one batch equal each item alone (GRFT merged, PEFT set).

    Raises:
        AssertionError: a path that does not compute what it claims.
    """
    two = {k: v[:2] for k, v in setup.inputs.items()}
    got = engine.logits(two, ["a0", "a1"])
    # bf16 (CUDA) rounds at about 3 significant digits: compare at that precision there.
    tol = {"rtol": 1e-3, "atol": 1e-4} if engine.dtype == torch.float32 else {"rtol": 0.05, "atol": 0.05}
    for i in range(2):
        ref = apply_adapter(copy.deepcopy(setup.model), adapters[i], check_fingerprint=False)
        merge(ref)
        want = ref({k: v[i : i + 1] for k, v in two.items()}).float()
        torch.testing.assert_close(got[i : i + 1], want, **tol)
    base = setup.model.features(two)
    for model in peft.values():
        mixed = peft_features(model, two, ["a0", "a1"])
        for i in range(2):
            model.set_adapter(f"a{i}")
            alone = model.base_model.model.features(two)[i : i + 1]
            torch.testing.assert_close(mixed[i : i + 1].float(), alone.float(), **tol)
        assert not torch.allclose(mixed, base), "PEFT adapters must change the output"


# --- timing --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile ``q`` (0–100) of a sample."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_rounds(
    methods: dict[str, Callable[[], object]], rounds: int, warmup: int, *, sync: bool = False
) -> dict[str, list[float]]:
    """Seconds of every method per round, the order rotated each round; warm-up rounds dropped.

    ``sync``: wait for the GPU before and after each call (CUDA kernels run asynchronously).
    """
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            methods[name]()
            if sync:
                torch.cuda.synchronize()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def bench_model(setup: Setup, args: argparse.Namespace, distinct: Sequence[int]) -> dict[str, Any]:
    """Build the adapters, engine and PEFT models of one setup, check them, time every method."""
    batch, n_max = args.batch, max(distinct)
    fingerprint = backbone_fingerprint(setup.model)
    adapters = [
        random_grft_adapter(
            copy.deepcopy(setup.model),
            base_name=setup.base_name,
            seed=i + 1,
            k=args.k,
            fingerprint=fingerprint,
        )
        for i in range(n_max)
    ]
    # Everything is built on the CPU in fp32, then moved: bf16 on CUDA, as the engine serves there.
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    engine = ServingEngine(copy.deepcopy(setup.model), device=device, dtype=dtype, fingerprint=fingerprint)
    for i, adapter in enumerate(adapters):
        engine.add(f"a{i}", adapter)
    size = sizes(setup.model, args.k)
    ranks = sorted({size["matched_rank"], LORA_RANK})
    peft = {r: build_peft(setup.model, r, n_max, seed=100 + r).to(device, dtype) for r in ranks}
    head_w = torch.stack([setup.model.task_head.weight] + [a.tensors[f"{HEAD}.weight"] for a in adapters])
    head_b = torch.stack([setup.model.task_head.bias] + [a.tensors[f"{HEAD}.bias"] for a in adapters])
    head_w, head_b = head_w.to(device, dtype), head_b.to(device, dtype)
    model = copy.deepcopy(setup.model).to(device, dtype)
    inputs = {
        k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in setup.inputs.items()
    }
    setup = Setup(setup.name, setup.base_name, model, inputs, setup.info)

    def engine_run(ids: list[str | None]) -> Callable[[], object]:
        return lambda: engine.logits(inputs, ids)

    def peft_run(m: Any, ids: list[str]) -> Callable[[], object]:
        slots = torch.tensor([int(a[1:]) + 1 for a in ids], device=device)
        return lambda: gathered_head(peft_features(m, inputs, ids), head_w, head_b, slots)

    methods: dict[str, Callable[[], object]] = {
        "base": lambda: model(inputs),
        "engine_base": engine_run([None] * batch),
    }
    for n in distinct:
        ids = [f"a{i % n}" for i in range(batch)]
        methods[f"grft_{n}"] = engine_run(list(ids))
        for r in ranks:
            methods[f"peft_r{r}_{n}"] = peft_run(peft[r], ids)
    with torch.inference_mode():
        check_equivalence(setup, engine, adapters, peft)
        print(
            f"{setup.name}: timing {len(methods)} methods, {args.warmup} + {args.rounds} rounds",
            file=sys.stderr,
        )
        times = time_rounds(methods, args.rounds, args.warmup, sync=device.type == "cuda")
    results = {
        name: {
            "latency_s": summarize(t),
            "p50_ms": 1000 * percentile(t, 50),
            "p99_ms": 1000 * percentile(t, 99),
            "items_per_s": batch / statistics.median(t),
        }
        for name, t in times.items()
    }
    ratios: dict[str, Any] = {}
    for n in distinct:
        g = times[f"grft_{n}"]
        # Latency of the other over GRFT's, round by round: GRFT's throughput relative to the other's.
        ratios[f"grft_{n}/base"] = ratio_summary(times["base"], g)
        ratios[f"grft_{n}/engine_base"] = ratio_summary(times["engine_base"], g)
        for r in ranks:
            ratios[f"grft_{n}/peft_r{r}_{n}"] = ratio_summary(times[f"peft_r{r}_{n}"], g)
    top, matched = max(distinct), size["matched_rank"]
    targets = {
        f"grft_{top}/base": {"target": TARGET_VS_BASE, "median": ratios[f"grft_{top}/base"]["median"]},
        f"grft_{top}/peft_r{matched}_{top}": {
            "target": TARGET_VS_PEFT,
            "median": ratios[f"grft_{top}/peft_r{matched}_{top}"]["median"],
        },
    }
    for t in targets.values():
        t["met"] = t["median"] >= t["target"]
    loaded = {"engine": engine, "adapters": adapters}
    return {
        "info": {**setup.info, **size, "k": args.k, "peft_ranks": ranks, "adapters": n_max},
        "methods": results,
        "ratios": ratios,
        "targets": targets,
        "_loaded": loaded,
    }


# --- cold load and warm switch -------------------------------------------------------------------


def cold_and_warm(
    setup: Setup, engine: ServingEngine, ks: Sequence[int], loads: int, work: Path
) -> dict[str, Any]:
    """Cold loads of adapters with each k from an artifact store, then the warm switch between them.

    See the module docstring for what each time covers.
    """
    from domain.artifacts import ArtifactStore

    store = ArtifactStore(f"file://{work / 'store'}")
    fetch_s: list[float] = []

    def fetcher(key: str) -> Callable[[], Path]:
        def fetch() -> Path:
            start = time.perf_counter()
            dest = store.get_folder(key, Path(tempfile.mkdtemp(dir=work)))
            fetch_s.append(time.perf_counter() - start)
            return dest

        return fetch

    cold: dict[str, Any] = {}
    for k in ks:
        adapter = random_grft_adapter(
            copy.deepcopy(setup.model),
            base_name=setup.base_name,
            seed=1000 + k,
            k=k,
            fingerprint=engine.fingerprint,
        )
        folder = save_adapter(work / f"adapter-k{k}", adapter.tensors, adapter.config)
        store.put_folder(f"adapters/k{k}", folder)
        totals, fetch_s[:] = [], []
        for i in range(loads + 1):
            cache = AdapterCache(lambda _: engine, budget_bytes=2**40)
            start = time.perf_counter()
            cache.preload(f"cold-k{k}", fetcher(f"adapters/k{k}"))
            if i:  # the first load pays one-off imports and allocations
                totals.append(time.perf_counter() - start)
            cache.evict(f"cold-k{k}")
        fetches = fetch_s[1:]
        cold[f"k{k}"] = {
            "file_bytes": sum(p.stat().st_size for p in folder.iterdir()),
            "total_s": summarize(totals),
            "fetch_s": summarize(fetches),
            "load_and_add_s": summarize([t - f for t, f in zip(totals, fetches, strict=True)]),
            "target_s": TARGET_COLD_S,
            "met": statistics.median(totals) < TARGET_COLD_S,
        }
    cache = AdapterCache(lambda _: engine, budget_bytes=2**40)
    ids = [f"warm-k{k}" for k in ks]
    for k, adapter_id in zip(ks, ids, strict=True):
        cache.preload(adapter_id, fetcher(f"adapters/k{k}"))
    samples = []
    for i in range(1000):
        adapter_id = ids[i % len(ids)]
        start = time.perf_counter()
        cache.acquire(adapter_id, fetcher(""))
        cache.release(adapter_id)
        samples.append(time.perf_counter() - start)
    for adapter_id in ids:
        cache.evict(adapter_id)
    assert cache.stats.misses == len(ids), "the warm switch must only hit the cache"
    warm = {key: value for key, value in summarize(samples).items() if key != "values"}
    return {"cold_load": cold, "warm_switch_s": warm | {"repeats": len(samples)}}


# --- report --------------------------------------------------------------------------------------


def _ratio_cell(r: dict[str, Any]) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


def tables(report: dict[str, Any]) -> str:
    """The markdown tables of a report."""
    lines: list[str] = []
    for name, m in report["models"].items():
        info = m["info"]
        lines += [
            f"### {name}: {info['base']}, {info['input']}",
            "",
            f"GRFT k={info['k']} rows of each of {info['eligible_matrices']} matrices (+ bias deltas); "
            f"PEFT LoRA ranks {info['peft_ranks']} (matched rank {info['matched_rank']}: "
            f"{info['lora_per_rank'] * info['matched_rank']:,} vs GRFT {info['grft_rows']:,} + "
            f"{info['grft_bias']:,} bias).",
            "",
            "| method | p50 ms | p99 ms | items/s | × base throughput |",
            "|---|---:|---:|---:|---:|",
        ]
        base = m["methods"]["base"]["latency_s"]["values"]
        for method, r in m["methods"].items():
            ratio = ratio_summary(base, r["latency_s"]["values"])
            lines.append(
                f"| {method} | {r['p50_ms']:,.1f} | {r['p99_ms']:,.1f} | {r['items_per_s']:,.1f} "
                f"| {_ratio_cell(ratio)} |"
            )
        lines += [
            "",
            "| GRFT throughput ratio (per round) | median (min–max) | target | met |",
            "|---|---:|---:|---|",
        ]
        for key, r in m["ratios"].items():
            t = m["targets"].get(key)
            target = f"≥ {t['target']}" if t else ""
            met = ("yes" if t["met"] else "no") if t else ""
            lines.append(f"| {key} | {_ratio_cell(r)} | {target} | {met} |")
        lines.append("")
    load = report.get("load")
    if load:
        lines += [
            f"### adapter load ({load['model']})",
            "",
            "| adapter | file bytes | cold load ms, median (min–max) | of which fetch ms | target | met |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for k, c in load["cold_load"].items():
            t = c["total_s"]
            lines.append(
                f"| {k} | {c['file_bytes']:,} | {1000 * t['median']:.1f} ({1000 * t['min']:.1f}–"
                f"{1000 * t['max']:.1f}) | {1000 * c['fetch_s']['median']:.1f} "
                f"| < {1000 * c['target_s']:.0f} ms | {'yes' if c['met'] else 'no'} |"
            )
        w = load["warm_switch_s"]
        lines += ["", f"Warm switch (cache hit, acquire + release): median {1e6 * w['median']:.1f} µs.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report (also printed and written to ``--json``)."""
    p = argparse.ArgumentParser(prog="bench.serving", description=__doc__.split("\n")[0])
    add_common_args(p, "serving")
    p.add_argument("--models", default=None, help=f"comma-separated, from {','.join(MODELS)}")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (quick 5, full 10, tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (tiny 0, quick 1, full 2)")
    p.add_argument("--batch", type=int, default=None, help="items per batch (32; tiny 4)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per text item")
    p.add_argument("--k", type=int, default=2, help="GRFT rows per eligible matrix")
    p.add_argument("--loads", type=int, default=None, help="timed cold loads per adapter (10; tiny 2)")
    p.add_argument("--model-dir", type=Path, default=None, help="model store (default $GRFT_MODEL_DIR)")
    args = p.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    models = (args.models or ("text" if mode == "quick" else ",".join(MODELS))).split(",")
    args.rounds = args.rounds or {"tiny": 2, "quick": 5, "full": 10}[mode]
    args.warmup = args.warmup if args.warmup is not None else {"tiny": 0, "quick": 1, "full": 2}[mode]
    args.batch = args.batch or (4 if args.tiny else 32)
    args.seq_len = 16 if args.tiny else args.seq_len
    args.loads = args.loads or (2 if args.tiny else 10)
    distinct = sorted({1, max(1, args.batch // 4), args.batch})
    setup_torch(args.threads)
    registry = ModelRegistry(args.model_dir)
    report: dict[str, Any] = {
        "benchmark": "serving",
        "command": command_line("bench.serving", argv),
        "mode": mode,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "model_dir")},
        "distinct_adapters": distinct,
        "machine": machine_info(args.device),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in models:
            setup = build_setup(
                name, registry, tiny=args.tiny, batch=args.batch, seq_len=args.seq_len, work=work
            )
            result = bench_model(setup, args, distinct)
            loaded = result.pop("_loaded")
            report["models"][name] = result
            if name == "text":
                report["load"] = {"model": setup.base_name} | cold_and_warm(
                    setup, loaded["engine"], (1, 8), args.loads, work
                )
    write_report(report, args.json, tables(report))
    return report


if __name__ == "__main__":
    main()
