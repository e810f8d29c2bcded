"""Helpers shared by the benchmarks: models built from configs, statistics, memory probes, reports.

Every benchmark takes ``--quick``, ``--tiny``, ``--json PATH`` (default ``bench/results/<name>.json``),
``--threads N`` (default 1: on a shared 2-core machine one intra-op thread gives stable ratios, see
RESULTS.md) and ``--device cpu|cuda``, prints a markdown table and writes JSON with ``machine_info()``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

# Models are built from configs; nothing may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from grft_core.method import HEAD, eligible_modules

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODELS = ("vit", "bert", "llama")
#: LLaMA-3.2-1B's shape (transformers ``LlamaConfig``), cut to ``layers`` decoder layers.
LLAMA_1B: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128_256,
    "tie_word_embeddings": True,
    "rope_theta": 500_000.0,
    "max_position_embeddings": 131_072,
}
LLAMA_1B_LAYERS = 16


def add_common_args(p: argparse.ArgumentParser, name: str) -> None:
    """The flags every benchmark takes (see the module docstring)."""
    p.add_argument(
        "--quick", action="store_true", help="fewer rounds and smaller inputs (minutes on 2 cores)"
    )
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds)")
    p.add_argument("--json", type=Path, default=RESULTS / f"{name}.json")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def setup_torch(threads: int) -> None:
    """One intra-op thread count for the process, and flush-denormal (Adam's decaying moments)."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)


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


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios ``num[i] / den[i]`` summarised, plus the fastest-over-fastest ratio."""
    return {
        **summarize([a / b for a, b in zip(num, den, strict=True)]),
        # Other load only ever adds time, so the fastest runs are the least disturbed ones.
        "ratio_of_min": min(num) / min(den),
    }


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU (and GPU) model, library versions and digests of the measured library sources."""
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
    parts = ("method/layers.py", "method/model.py", "method/setup.py", "method/gps.py", "adapters/format.py")
    sources = {
        name: hashlib.sha256((ROOT / "grft_core" / name).read_bytes()).hexdigest()[:12]
        for name in (*parts, "method/selection.py")
    }
    info: dict[str, Any] = {
        "grft_core_sha256": sources,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run, for the report."""
    args = sys.argv[1:] if argv is None else list(argv)
    return f"uv run --frozen python -m {module} " + " ".join(args)


def write_report(report: dict[str, Any], path: Path, table: str) -> None:
    """Print the markdown table and write the JSON report."""
    print(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


# --- models built from configs -------------------------------------------------------------------


class _Classifier(nn.Module):
    """A backbone and a new linear head, stored under the attribute name the library excludes from
    selection and keeps trainable (``grft_core.method.model.HEAD``)."""

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
    """A transformers encoder or decoder, mean pooling over tokens and the head.

    The batches have no padding, so mask-aware mean pooling is a plain mean; for the causal LLaMA shape
    the mean over positions is the usual sequence-classification pooling when no EOS token is trained.
    """

    def forward(self, x: Tensor) -> Tensor:
        hidden: Tensor = self.backbone(input_ids=x).last_hidden_state
        out: Tensor = self.head(hidden.mean(dim=1))
        return out


@dataclass(frozen=True)
class Shape:
    """Input sizes of one benchmark batch."""

    batch: int
    image_size: int
    seq_len: int
    tiny: bool
    llama_layers: int = 2


def llama_config(layers: int, tiny: bool) -> Any:
    """``LlamaConfig`` of the LLaMA-3.2-1B shape with ``layers`` decoder layers (tiny: hidden 64)."""
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=256,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            num_hidden_layers=layers,
            tie_word_embeddings=True,
        )
    return LlamaConfig(**LLAMA_1B, num_hidden_layers=layers)


def build_model(
    name: str, s: Shape, *, seed: int = 0, device: str = "cpu"
) -> tuple[nn.Module, Tensor, Tensor, dict[str, Any]]:
    """The classifier with random weights (built on ``device``), one seeded batch ``(x, y)`` and a
    description of both.

    ``vit``: timm ViT-B/16 with a 10-class head; ``bert``: BERT-base (no pooler), mean pooling, 2 classes;
    ``llama``: the LLaMA-3.2-1B shape at ``s.llama_layers`` layers, mean pooling, 2 classes. Eligible
    matrices are the backbone's Linear layers (for LLaMA: q/k/v/o and gate/up/down of every decoder
    layer; the embedding, tied to the absent lm_head, is not a Linear).

    Raises:
        ValueError: an unknown model name.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model: nn.Module
    with torch.device(device):
        if name == "vit":
            import timm

            sizes: dict[str, Any] = {"depth": 2, "embed_dim": 64, "num_heads": 2} if s.tiny else {}
            backbone = timm.create_model(
                "vit_base_patch16_224", pretrained=False, num_classes=0, img_size=s.image_size, **sizes
            )
            model = ImageClassifier(backbone, cast(int, backbone.num_features), 10)
            arch = "timm vit_base_patch16_224" + (" (depth 2, embed 64)" if s.tiny else "")
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
            arch = "transformers BertModel(BertConfig())" + (" (2 layers, hidden 64)" if s.tiny else "")
        elif name == "llama":
            from transformers import LlamaModel

            lcfg = llama_config(s.llama_layers, s.tiny)
            backbone = LlamaModel(lcfg)
            model = TextClassifier(backbone, lcfg.hidden_size, 2)
            arch = f"transformers LlamaModel, LLaMA-3.2-1B shape, {s.llama_layers} layers" + (
                " (tiny: hidden 64, vocab 1000)" if s.tiny else ""
            )
        else:
            raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    if name == "vit":
        x = torch.randn(s.batch, 3, s.image_size, s.image_size, generator=g)
        y = torch.randint(0, 10, (s.batch,), generator=g)
        input_desc = f"{s.batch} × 3 × {s.image_size} × {s.image_size} images"
    else:
        vocab = int(cast(Any, model).backbone.config.vocab_size)
        x = torch.randint(0, vocab, (s.batch, s.seq_len), generator=g)
        y = torch.randint(0, 2, (s.batch,), generator=g)
        input_desc = f"{s.batch} × {s.seq_len} token ids"
    info = {
        "arch": arch,
        "input": input_desc,
        "params": sum(p.numel() for p in model.parameters()),
        "eligible_matrices": len(eligible_modules(model)),
    }
    return model, x.to(device), y.to(device), info


# --- memory probes -------------------------------------------------------------------------------


def status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def maxrss_bytes() -> int:
    """The process's ``ru_maxrss`` in bytes (kibibytes on Linux, bytes on macOS)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Lower this process's peak-RSS mark (``VmHWM``) to its current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakProbe:
    """Peak memory above a baseline taken at construction.

    On CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated at the start. On CPU: ``VmHWM`` (reset at the start) minus ``VmRSS`` at the start;
    ``ru_maxrss`` is not usable because Linux folds a vfork-ing parent's mark into the child's.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            self.hwm_reset = True
        else:
            self.hwm_reset = reset_peak_rss()
            self.start = status_bytes("VmRSS") or 0

    def result(self) -> dict[str, Any]:
        """``peak_bytes`` (above the start) and how it was measured."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            hwm = torch.cuda.max_memory_allocated()
            source = "torch.cuda.max_memory_allocated"
        else:
            found = status_bytes("VmHWM")
            if found is None:
                hwm, self.start, source = maxrss_bytes(), 0, "ru_maxrss"
            else:
                hwm, source = found, "VmHWM, reset at start" if self.hwm_reset else "VmHWM"
        return {"base_bytes": self.start, "hwm_bytes": hwm, "peak_bytes": hwm - self.start, "source": source}


@contextlib.contextmanager
def autocast(device: str) -> Iterator[None]:
    """bf16 autocast on CUDA, as ``grft_core.method.trainer`` trains there; nothing on CPU."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        yield


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer brackets the whole step."""
    if device == "cuda":
        torch.cuda.synchronize()


def mib(n: float) -> str:
    """Bytes as MiB with two decimals."""
    return f"{n / 2**20:,.2f} MiB"
