"""Time and memory of one training step: GRFT against full fine-tuning, masked-dense GRFT and LoRA, on CPU.

What is measured
----------------
One optimisation step (``zero_grad``, forward, cross-entropy, backward, ``Adam.step``) of two classifiers
whose backbones are built from configs with random weights, since the cost of a step does not depend
on the weights' values:

* ``vit``: ``vit_base_patch16_224`` from timm (ViT-B/16) plus a 768→10 linear head, on random images;
* ``bert``: ``BertModel(BertConfig())`` (BERT-base, no pooler), mean pooling and a 768→2 head, on random
  token ids.

Every method starts from a deep copy of the same initial model and sees the same batch:

* ``full``: every parameter trains;
* ``masked_dense``: the paper's formulation (``apply_masked_dense``): the selected matrices train whole,
  their gradients multiplied by a mask;
* ``lora``: PEFT LoRA of rank 8 on the same eligible matrices;
* ``grft``: ``apply_grft`` with k=1 row per eligible matrix, the same rows ``masked_dense`` uses;
* ``grft_cols``: ``apply_grft`` with k=1 column per eligible matrix.

The rows/columns are a seeded random choice per matrix: selecting them is a one-off pass before training,
not part of a step. The L2 term toward the pre-trained weights is left out of every method; for GRFT it
is a sum of squares over k·in numbers per matrix, and for masked-dense leaving it out only makes the
baseline faster, so the comparison does not flatter GRFT.

Why interleaved
---------------
The machine is shared and its speed drifts over minutes. Timing the methods one block after another would
hand a slow period to whichever method ran in it. After two warm-up steps each, the methods run in turns
(A B C D, A B C D, ...) for R rounds, so every round sees roughly the same conditions, and the ratios
are taken between steps of the same round before their median is reported.

Memory
------
``grad_opt_bytes`` is exact: the bytes of every ``.grad`` plus every tensor in Adam's state
(``exp_avg``, ``exp_avg_sq``, ``step``) after a step. Peak resident memory is measured by running each
method alone in a fresh process (``--method X --peak-only``): three steps, then the process's peak RSS
(``VmHWM``, reset after the build; see ``peak_only`` for why not ``ru_maxrss``) minus the resident size
right after building the model and the batch, i.e. activations kept for the backward, gradients,
optimizer state, masks and temporaries.

Usage::

    uv run --frozen python -m bench.step_time [--models vit,bert] [--rounds 5] [--batch 8] [--tiny]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

# Models are built from configs; nothing may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812
from torch import Tensor, nn  # noqa: E402

from grft_core.config import GRFTConfig  # noqa: E402
from grft_core.layers import weight_matrix_shape  # noqa: E402
from grft_core.methods import inject_lora  # noqa: E402
from grft_core.model import (  # noqa: E402
    HEAD,
    apply_grft,
    apply_masked_dense,
    count_parameters,
    eligible_modules,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "bench" / "out" / "step_time.json"
MODELS = ("vit", "bert")
METHODS = ("full", "masked_dense", "lora", "grft", "grft_cols")
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
    k: int = 1
    lora_rank: int = 8
    seed: int = 0
    lr: float = 1e-4


class _Classifier(nn.Module):
    """A backbone and a new linear head, stored under the attribute name the library excludes from
    selection and keeps trainable (``grft_core.model.HEAD``)."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        setattr(self, HEAD, nn.Linear(dim, num_classes))

    @property
    def head(self) -> nn.Module:
        module: nn.Module = getattr(self, HEAD)
        return module


class ImageClassifier(_Classifier):
    """A timm backbone that returns pooled features (``num_classes=0``) and the head."""

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.backbone(x))
        return out


class TextClassifier(_Classifier):
    """A transformers encoder, mean pooling over tokens and the head."""

    def forward(self, x: Tensor) -> Tensor:
        hidden: Tensor = self.backbone(input_ids=x).last_hidden_state
        # The batch has no padding, so attention-mask mean pooling is a plain mean over tokens.
        out: Tensor = self.head(hidden.mean(dim=1))
        return out


def build_model(name: str, s: Settings) -> tuple[nn.Module, Tensor, Tensor, dict[str, Any]]:
    """The classifier with random weights, one seeded batch ``(x, y)`` and a description of both."""
    torch.manual_seed(s.seed)
    g = torch.Generator().manual_seed(s.seed + 1)
    model: nn.Module
    if name == "vit":
        import timm

        sizes: dict[str, Any] = {"depth": 2, "embed_dim": 64, "num_heads": 2} if s.tiny else {}
        backbone = timm.create_model(
            "vit_base_patch16_224", pretrained=False, num_classes=0, img_size=s.image_size, **sizes
        )
        model = ImageClassifier(backbone, cast(int, backbone.num_features), 10)
        x = torch.randn(s.batch, 3, s.image_size, s.image_size, generator=g)
        y = torch.randint(0, 10, (s.batch,), generator=g)
        arch = "timm vit_base_patch16_224" + (" (depth 2, embed 64)" if s.tiny else "")
        input_desc = f"{s.batch} × 3 × {s.image_size} × {s.image_size} images"
    elif name == "bert":
        from transformers import BertConfig, BertModel

        cfg = (
            BertConfig(
                vocab_size=1000,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=256,
            )
            if s.tiny
            else BertConfig()
        )
        backbone = BertModel(cfg, add_pooling_layer=False)
        model = TextClassifier(backbone, cfg.hidden_size, 2)
        x = torch.randint(0, cfg.vocab_size, (s.batch, s.seq_len), generator=g)
        y = torch.randint(0, 2, (s.batch,), generator=g)
        arch = "transformers BertModel(BertConfig())" + (" (2 layers, hidden 64)" if s.tiny else "")
        input_desc = f"{s.batch} × {s.seq_len} token ids"
    else:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    info = {
        "arch": arch,
        "input": input_desc,
        "params": sum(p.numel() for p in model.parameters()),
        "eligible_matrices": len(eligible_modules(model)),
    }
    return model, x, y, info


def random_indices(model: nn.Module, axis: str, k: int, seed: int) -> dict[str, Tensor]:
    """A seeded random choice of ``k`` rows or columns for every eligible matrix."""
    g = torch.Generator().manual_seed(seed + (0 if axis == "rows" else 1))
    chosen: dict[str, Tensor] = {}
    for name, module in eligible_modules(model).items():
        out_dim, in_dim = weight_matrix_shape(module)
        limit = out_dim if axis == "rows" else in_dim
        chosen[name] = torch.randperm(limit, generator=g)[:k].sort().values
    return chosen


def prepare(
    base: nn.Module,
    method: str,
    rows: dict[str, Tensor],
    cols: dict[str, Tensor],
    s: Settings,
    *,
    fresh: bool,
) -> nn.Module:
    """``base`` (or a deep copy of it when ``fresh``) made ready for ``method``, in train mode."""
    model = copy.deepcopy(base) if fresh else base
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "masked_dense":
        apply_masked_dense(model, rows, "rows")
    elif method == "lora":
        inject_lora(model, GRFTConfig(method="lora", lora_rank=s.lora_rank))
    elif method == "grft":
        apply_grft(model, rows, "rows")
    elif method == "grft_cols":
        apply_grft(model, cols, "columns")
    else:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    # The same mode for every method: dropout (BERT's 0.1) costs the same everywhere.
    model.train()
    return model


class Runner:
    """One method's model and Adam optimizer; ``step`` runs and times one training step."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        self.model = model
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(self, x: Tensor, y: Tensor) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
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


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and quartiles (inclusive method) of a small sample, plus the sample."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "values": list(values),
    }


def time_methods(
    name: str, methods: Sequence[str], s: Settings, rounds: int, warmup: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Interleaved step times and exact gradient/optimizer bytes of every method on one model."""
    base, x, y, info = build_model(name, s)
    rows = random_indices(base, "rows", s.k, s.seed)
    cols = random_indices(base, "columns", s.k, s.seed)
    runners = {m: Runner(prepare(base, m, rows, cols, s, fresh=True), s.lr) for m in methods}
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
            **runner.state_bytes(),
        }
    return info, results


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Per-round ratios of each GRFT variant's step time to each baseline's, with median and spread."""
    out: dict[str, Any] = {}
    for g in GRFT_METHODS:
        if g not in results:
            continue
        for b, target in TARGETS.items():
            if b not in results:
                continue
            tg, tb = results[g]["step_s"]["values"], results[b]["step_s"]["values"]
            summary = summarize([a / c for a, c in zip(tg, tb, strict=True)])
            out[f"{g}/{b}"] = {
                **summary,
                # Other load only ever adds time, so the fastest steps are the least disturbed ones; their
                # ratio is a second estimate, shown beside the per-round median, never instead of it.
                "ratio_of_min": min(tg) / min(tb),
                "target": target,
                "met": summary["median"] <= target,
            }
    return out


def settings_args(s: Settings) -> list[str]:
    """The CLI flags that rebuild ``s`` in a subprocess."""
    args = ["--batch", str(s.batch), "--image-size", str(s.image_size), "--seq-len", str(s.seq_len)]
    args += ["--k", str(s.k), "--lora-rank", str(s.lora_rank), "--seed", str(s.seed), "--lr", str(s.lr)]
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


def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def maxrss_bytes() -> int:
    # ru_maxrss is in kibibytes on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Lower this process's peak-RSS mark (``VmHWM``) to its current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_only(name: str, method: str, s: Settings) -> dict[str, Any]:
    """Build, take ``PEAK_STEPS`` steps of one method, report peak RSS above the built model.

    ``ru_maxrss`` alone is not usable here: Python starts subprocesses with vfork + exec, and Linux then
    folds the parent's high-water mark into the child's ``ru_maxrss``, so every child reported the
    benchmark parent's peak. ``VmHWM`` belongs to the child's own address space; it is reset after the
    build so that transient build allocations do not count either. ``ru_maxrss`` is still recorded.
    """
    base, x, y, _ = build_model(name, s)
    rows = random_indices(base, "rows", s.k, s.seed)
    cols = random_indices(base, "columns", s.k, s.seed)
    gc.collect()
    hwm_reset = reset_peak_rss()
    rss_built = _status_bytes("VmRSS")
    runner = Runner(prepare(base, method, rows, cols, s, fresh=False), s.lr)
    for _ in range(PEAK_STEPS):
        runner.step(x, y)
    hwm = _status_bytes("VmHWM")
    maxrss = maxrss_bytes()
    if rss_built is None or hwm is None:
        # Off Linux: the process-wide peak is all there is, build included.
        rss_built, hwm, source = 0, maxrss, "ru_maxrss"
    else:
        source = "VmHWM, reset after build" if hwm_reset else "VmHWM"
    return {
        "model": name,
        "method": method,
        "steps": PEAK_STEPS,
        "rss_after_build_bytes": rss_built,
        "hwm_bytes": hwm,
        "ru_maxrss_bytes": maxrss,
        "peak_source": source,
        "peak_rss_bytes": hwm - rss_built,
    }


def profile_step(name: str, method: str, s: Settings, warmup: int, rows_limit: int = 30) -> str:
    """A torch.profiler table (CPU ops by self time) of one step after ``warmup`` steps."""
    from torch.profiler import ProfilerActivity, profile

    base, x, y, _ = build_model(name, s)
    rows = random_indices(base, "rows", s.k, s.seed)
    cols = random_indices(base, "columns", s.k, s.seed)
    runner = Runner(prepare(base, method, rows, cols, s, fresh=False), s.lr)
    for _ in range(warmup):
        runner.step(x, y)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        runner.step(x, y)
    # By operator first (where the time goes), then by operator and shape (which matrices it is).
    averages = prof.key_averages()
    by_shape = prof.key_averages(group_by_input_shape=True)
    tables = [t.table(sort_by="self_cpu_time_total", row_limit=rows_limit) for t in (averages, by_shape)]
    return "\n".join(str(t) for t in tables)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import peft
    import timm
    import transformers

    # The library is edited over time; the digests tie the numbers to the code that produced them.
    sources = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:12]
        for f in sorted((ROOT / "grft_core").glob("*.py"))
        if f.name in ("layers.py", "model.py", "methods.py")
    }
    return {
        "grft_core_sha256": sources,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: per model, step times and memory per method, then the ratios."""
    lines: list[str] = []
    for name, entry in report["models"].items():
        info = entry["info"]
        lines += [
            f"#### {name}: {info['arch']}, {info['params'] / 1e6:.1f} M params, "
            f"{info['eligible_matrices']} eligible matrices; batch {info['input']}",
            "",
            "| method | step ms, median | min–max | IQR | trainable params | grad + Adam state | peak RSS |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m, r in entry["methods"].items():
            t = r["step_s"]
            peak = r.get("peak_rss_bytes")
            lines.append(
                f"| {m} | {t['median'] * 1e3:,.0f} | {t['min'] * 1e3:,.0f}–{t['max'] * 1e3:,.0f} "
                f"| {t['q1'] * 1e3:,.0f}–{t['q3'] * 1e3:,.0f} | {r['trainable_params']:,} "
                f"| {_mib(r['grad_opt_bytes'])} ({r['grad_opt_bytes']:,} B) "
                f"| {_mib(peak) if peak is not None else 'n/a'} |"
            )
        lines += [
            "",
            "| ratio (per round) | median | min–max | IQR | fastest / fastest | target | met (median) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for key, r in entry["ratios"].items():
            lines.append(
                f"| {key} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {r['q1']:.3f}–{r['q3']:.3f} "
                f"| {r['ratio_of_min']:.3f} | ≤ {r['target']} | {'yes' if r['met'] else 'no'} |"
            )
        for g in GRFT_METHODS:
            if g in entry["methods"] and "lora" in entry["methods"]:
                gb, lb = entry["methods"][g]["grad_opt_bytes"], entry["methods"]["lora"]["grad_opt_bytes"]
                verdict = "yes" if gb <= lb else "no"
                lines.append(f"| {g} grad + Adam bytes / lora's | {gb / lb:.3f} | | | | ≤ 1 | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.step_time", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: vit, bert")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, timed in this order")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="default 8 (2 with --tiny)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (32 with --tiny)")
    p.add_argument("--seq-len", type=int, default=None, help="default 128 (16 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny configs for a smoke test")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice); 1 is far less disturbed by other load",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--no-peak", action="store_true", help="skip the per-method peak-RSS subprocesses")
    p.add_argument("--method", help="with --peak-only: the one method to run")
    p.add_argument("--peak-only", action="store_true", help="print one method's peak RSS as JSON")
    p.add_argument("--profile", help="comma-separated methods: print a torch.profiler table of one step")
    args = p.parse_args(argv)
    if args.peak_only and (args.method is None or "," in args.models):
        p.error("--peak-only needs --method and exactly one model in --models")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    # Adam's second moments decay toward denormals, which slow x86 float math by orders of magnitude.
    torch.set_flush_denormal(True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    s = Settings(
        batch=args.batch or (2 if args.tiny else 8),
        image_size=args.image_size or (32 if args.tiny else 224),
        seq_len=args.seq_len or (16 if args.tiny else 128),
        tiny=args.tiny,
        k=args.k,
        lora_rank=args.lora_rank,
        seed=args.seed,
        lr=args.lr,
    )
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.peak_only:
        print(json.dumps(peak_only(models[0], args.method, s)))
        return None
    if args.profile:
        for name in models:
            for method in args.profile.split(","):
                print(f"## {name} / {method}\n{profile_step(name, method, s, args.warmup)}")
        return None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report: dict[str, Any] = {
        "command": "uv run --frozen python -m bench.step_time "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "settings": {**asdict(s), "rounds": args.rounds, "warmup": args.warmup, "methods": methods},
        "models": {},
    }
    for name in models:
        # Other processes on a shared machine slow every method; the load averages show how busy it was.
        load_before = os.getloadavg()
        info, results = time_methods(name, methods, s, args.rounds, args.warmup)
        info["loadavg_before"], info["loadavg_after"] = load_before, os.getloadavg()
        # The timing copies are freed before the subprocesses start, so they do not compete for memory.
        gc.collect()
        if not args.no_peak:
            for m in methods:
                peak = measure_peak(name, m, s)
                results[m].update({k: v for k, v in peak.items() if k not in ("model", "method")})
        report["models"][name] = {"info": info, "methods": results, "ratios": ratios(results)}
    print(markdown(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
