"""Bytes on disk of what each method has to store: GRFT adapters, LoRA, GPS-style masks, full checkpoints.

What is written
---------------
For ViT-B/16, BERT-base and the LLaMA-3.2-1B shape cut to 2 decoder layers (``bench.common.build_model``,
random weights: sizes do not depend on values), every variant is saved as a real file under a temporary
folder, measured, and deleted:

* ``grft k=1|2|8`` (fp32 and fp16): ``grft_core.adapters.format.adapter_tensors`` of a model wrapped by
  ``apply_grft`` (k rows per eligible matrix, bias deltas, the head) written by ``save_adapter`` (its
  ``fp16`` option stores deltas and bias deltas in float16; int32 indices and the head stay as they are);
* ``lora r=8``: the ``lora_A``/``lora_B`` tensors and the head of a model injected by PEFT (through
  ``grft_core.method.setup.inject_lora``), written by ``save_adapter``;
* ``gps K=1|8`` (fp32): the GPS adapter layout of ``grft_core.method.gps`` (int32 ``(out, K)`` column
  indices, fp32 values, bias deltas, the head) written by ``save_adapter``, and beside it the same
  entries stored as a packed bitmask (``numpy.packbits`` of the ``(out, in)`` mask, one bit per weight)
  plus the values, written with ``safetensors.torch.save_file``. The table shows both and marks the
  smaller; for K ≪ in the indices win (4·K bytes per row against in/8);
* ``full checkpoint``: ``safetensors.torch.save_file`` of the classifier's whole fp32 state dict.

The 16-layer LLaMA-3.2-1B shape is **computed, not written**: its full checkpoint is ~5 GB. Every file of
the 2-layer model is parsed (its safetensors header lists each tensor's name, dtype and shape), the
entries of decoder layer 1 are repeated for layers 2..15, and the file size is computed with the
safetensors layout (8-byte length, JSON header padded to 8 bytes, tensors sorted by dtype then name).
The same calculator is checked against every real file written here, and the report records whether
it matched them all (``calculator_exact``).

Sizes are ``adapter_model.safetensors`` bytes (``save_adapter`` also writes a few-KB JSON config,
reported as ``config_bytes``).

Usage::

    uv run --frozen python -m bench.adapter_size [--models vit,bert,llama] [--quick] [--tiny] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from bench.common import (
    LLAMA_1B_LAYERS,
    Shape,
    add_common_args,
    build_model,
    command_line,
    machine_info,
    setup_torch,
    write_report,
)
from bench.step_time import random_entries, random_indices
from grft_core import GRFTConfig
from grft_core.adapters import CONFIG_NAME, WEIGHTS_NAME, adapter_tensors, save_adapter
from grft_core.method import HEAD, apply_grft, entry_masks, gps_adapter_tensors, inject_lora, remove_grft

GRFT_KS = (1, 2, 8)
GPS_KS = (1, 8)
LORA_RANK = 8
# safetensors sorts tensors by dtype, larger enum value first, then by name (Rust ``DType`` order).
_DTYPE_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4}
_DTYPE_BYTES.update({"U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8})

Entry = tuple[str, str, list[int]]


def read_header(path: Path) -> tuple[list[Entry], dict[str, str] | None]:
    """The ``(name, dtype, shape)`` entries and the metadata of a safetensors file."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        doc = json.loads(f.read(n))
    meta = doc.pop("__metadata__", None)
    return [(k, v["dtype"], list(v["shape"])) for k, v in doc.items()], meta


def safetensors_size(entries: Sequence[Entry], metadata: dict[str, str] | None) -> int:
    """The exact size of a safetensors file holding ``entries`` (checked against real files)."""
    ordered = sorted(entries, key=lambda e: (-_DTYPE_ORDER.index(e[1]), e[0]))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in ordered:
        size = int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    n = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + n + (8 - n % 8) % 8 + offset


def scale_layers(entries: Sequence[Entry], layers: int) -> list[Entry]:
    """Entries of a 2-layer decoder extended to ``layers``: layer 1's tensors repeated for 2..layers-1."""
    out = list(entries)
    pattern = re.compile(r"(^|\.)layers\.1\.")
    for name, dtype, shape in entries:
        if pattern.search(name):
            out += [(pattern.sub(rf"\g<1>layers.{i}.", name, 1), dtype, shape) for i in range(2, layers)]
    return out


def _measure(path: Path, folder: Path | None = None) -> dict[str, Any]:
    entries, meta = read_header(path)
    size = path.stat().st_size
    result: dict[str, Any] = {"bytes": size, "calculator_exact": safetensors_size(entries, meta) == size}
    if folder is not None:
        result["config_bytes"] = (folder / CONFIG_NAME).stat().st_size
    result["_entries"], result["_meta"] = entries, meta
    return result


def _save(
    tmp: Path, label: str, tensors: dict[str, Tensor], method: str, fp16: bool = False
) -> dict[str, Any]:
    folder = save_adapter(tmp / label.replace(" ", "_"), tensors, {"method": method}, fp16=fp16)
    return _measure(folder / WEIGHTS_NAME, folder)


def _bitmask_file(
    tmp: Path, label: str, model: nn.Module, indices: dict[str, Tensor], gps: dict[str, Tensor]
) -> dict[str, Any]:
    """The GPS entries as packed bitmasks (one bit per weight) plus values, bias deltas and head."""
    tensors: dict[str, Tensor] = {}
    for name, mask in entry_masks(model, indices).items():
        tensors[f"{name}.gps_mask_bits"] = torch.from_numpy(np.packbits(mask.reshape(-1).numpy()))
        tensors[f"{name}.gps_values"] = gps[f"{name}.gps_values"]
        if f"{name}.gps_bias" in gps:
            tensors[f"{name}.gps_bias"] = gps[f"{name}.gps_bias"]
    tensors.update({k: v for k, v in gps.items() if k.startswith(HEAD + ".")})
    path = tmp / f"{label}.safetensors"
    save_file(tensors, str(path))
    return _measure(path)


def measure_model(
    name: str, s: Shape, tmp: Path, grft_ks: Sequence[int], gps_ks: Sequence[int]
) -> dict[str, Any]:
    """Write every variant for one model; returns label → measurement."""
    model, _, _, info = build_model(name, s)
    state = model.state_dict()
    out: dict[str, Any] = {}
    for k in grft_ks:
        apply_grft(model, random_indices(model, "rows", k, 0), "rows")
        tensors = adapter_tensors(model, "grft")
        out[f"grft k={k} fp32"] = _save(tmp, f"grft_k{k}_fp32", tensors, "grft")
        out[f"grft k={k} fp16"] = _save(tmp, f"grft_k{k}_fp16", tensors, "grft", fp16=True)
        remove_grft(model)
    for k in gps_ks:
        indices = random_entries(model, k, 0)
        # GPS trains the masked modules' biases, as GRFT does: store their deltas too.
        for p in model.parameters():
            p.requires_grad_(True)
        tensors = gps_adapter_tensors(model, state, indices)
        tensors.update({f"{HEAD}.{n}": p.detach() for n, p in getattr(model, HEAD).named_parameters()})
        idx = _save(tmp, f"gps_K{k}_indices", tensors, "gps")
        bits = _bitmask_file(tmp, f"gps_K{k}_bitmask", model, indices, tensors)
        smaller = "indices" if idx["bytes"] <= bits["bytes"] else "bitmask"
        out[f"gps K={k} fp32, indices"] = {**idx, "chosen": smaller == "indices"}
        out[f"gps K={k} fp32, bitmask"] = {**bits, "chosen": smaller == "bitmask"}
    full_path = tmp / f"{name}_full.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(full_path))
    out["full checkpoint fp32"] = _measure(full_path)
    full_path.unlink()
    inject_lora(model, GRFTConfig(method="lora", lora_rank=LORA_RANK))
    out[f"lora r={LORA_RANK} fp32"] = _save(tmp, "lora", adapter_tensors(model, "lora"), "lora")
    return {"info": info, "variants": out}


def extrapolate(measured: dict[str, Any], layers: int) -> dict[str, Any]:
    """The 2-layer LLaMA files' headers extended to ``layers`` decoder layers and sized exactly."""
    variants = {}
    for label, m in measured["variants"].items():
        entries = scale_layers(m["_entries"], layers)
        variants[label] = {"bytes": safetensors_size(entries, m["_meta"]), "computed": True}
        if "chosen" in m:
            variants[label]["chosen"] = m["chosen"]
    return {
        "info": {"arch": f"LLaMA-3.2-1B shape, {layers} layers (computed from the 2-layer files)"},
        "variants": variants,
    }


def markdown(report: dict[str, Any]) -> str:
    """One table: variants as rows, models as columns (bytes, then MiB)."""
    models = list(report["models"])
    labels: list[str] = []
    for entry in report["models"].values():
        labels += [lbl for lbl in entry["variants"] if lbl not in labels]
    lines = ["| variant | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for label in labels:
        cells = []
        for m in models:
            v = report["models"][m]["variants"].get(label)
            if v is None:
                cells.append("")
                continue
            mark = " ✓" if v.get("chosen") else ""
            cells.append(f"{v['bytes']:,} B ({v['bytes'] / 2**20:,.2f} MiB){mark}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.adapter_size", description=__doc__.split("\n")[0])
    add_common_args(p, "adapter_size")
    p.add_argument("--models", default="vit,bert,llama", help="comma-separated: vit, bert, llama")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_torch(args.threads)
    s = Shape(batch=1, image_size=32 if args.tiny else 224, seq_len=8, tiny=args.tiny, llama_layers=2)
    grft_ks, gps_ks = ((1, 2), (1,)) if args.tiny else (GRFT_KS, GPS_KS)
    report: dict[str, Any] = {
        "command": command_line("bench.adapter_size", argv),
        "machine": machine_info(args.device),
        "settings": {
            "tiny": args.tiny,
            "grft_k": list(grft_ks),
            "gps_K": list(gps_ks),
            "lora_rank": LORA_RANK,
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="grft-adapter-size-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            key = "llama (2 layers)" if name == "llama" else name
            report["models"][key] = measure_model(name, s, Path(tmp), grft_ks, gps_ks)
            if name == "llama":
                report["models"][f"llama ({LLAMA_1B_LAYERS} layers)"] = extrapolate(
                    report["models"][key], LLAMA_1B_LAYERS
                )
    exact = [
        v["calculator_exact"]
        for e in report["models"].values()
        for v in e["variants"].values()
        if "calculator_exact" in v
    ]
    report["calculator_exact"] = all(exact)
    for entry in report["models"].values():
        for v in entry["variants"].values():
            v.pop("_entries", None)
            v.pop("_meta", None)
    write_report(report, args.json, markdown(report))
    return report


if __name__ == "__main__":
    main()
