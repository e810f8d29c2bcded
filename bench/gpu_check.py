"""The GPU check in one process: step time and peak memory, the selection pass, a short real fine-tune.

Run by ``bench/gpu_check.sh`` (which prints the GPU and picks the interpreter). On CUDA, in bf16
autocast (as ``grft_core.method.trainer`` trains), budgeted to finish in under 8 minutes on one H100:

1. ``bench.step_time`` on ViT-B/16 (batch 16 at 224 px) and the LLaMA-3.2-1B shape at 2 layers (batch 16
   × 256 tokens): full, LoRA r=8, masked-dense and GRFT rows, 5 interleaved rounds, peak CUDA memory of
   each method in its own process;
2. the same on the LLaMA-3.2-1B shape at all 16 layers (batch 8 × 256 tokens);
3. ``bench.selection_pass`` on the digits task (3 rounds, peaks);
4. ``bench.finetune_check``: GRFT and GPS on digits through ``grft_core.pipeline``;
5. ``bench.serving`` on MiniLM and ViT-S (bf16): 1/8/32 adapters per batch of 32 against the base model
   and PEFT's mixed-adapter batch, and the adapter cold load.
6. ``bench.generation`` on SmolLM2-135M (bf16): chat generation, 1/8/32 GRFT adapters in a batch of 32
   against transformers' ``generate`` on the base and PEFT's mixed-adapter ``generate``.

``--device cpu --tiny`` is the dry run a test runs: the same calls at smoke sizes, without the peak
subprocesses. Each part writes its own JSON beside ``gpu_check.json`` (the summary) in ``--out``
(default ``$OUT`` when set, else ``bench/results``). A failing part is recorded and the others still run;
the exit status is 1 if any part failed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import finetune_check, generation, selection_pass, serving, step_time
from bench.common import RESULTS, machine_info

METHODS = "full,lora,masked_dense,grft"


def plan(device: str, tiny: bool, out: Path) -> list[tuple[str, Callable[..., Any], list[str]]]:
    """The parts as ``(name, main, argv)``."""
    common = ["--device", device] + (["--tiny"] if tiny else [])
    fast = ["--rounds", "1", "--warmup", "1", "--no-peak"] if tiny else ["--rounds", "5", "--warmup", "2"]
    big = [] if tiny else ["--batch", "16", "--seq-len", "256"]
    return [
        (
            "step_time_vit_llama2",
            step_time.main,
            [*common, *fast, *big, "--models", "vit,llama", "--llama-layers", "2", "--methods", METHODS],
        ),
        (
            "step_time_llama16",
            step_time.main,
            [*common, *fast, "--models", "llama", "--llama-layers", "16", "--methods", METHODS]
            + ([] if tiny else ["--batch", "8", "--seq-len", "256"]),
        ),
        (
            "selection_pass",
            selection_pass.main,
            [*common, "--rounds", "1" if tiny else "3"] + (["--no-peak"] if tiny else []),
        ),
        ("finetune_check", finetune_check.main, common),
        # Many adapters in one batch vs PEFT's mixed-adapter batch, where PEFT's per-adapter kernels hurt.
        (
            "serving",
            serving.main,
            [*common, "--models", "text" if tiny else "text,vit"] + ([] if tiny else ["--rounds", "5"]),
        ),
        # Chat generation on SmolLM2 in bf16: 1/8/32 adapters per batch of 32 vs the base and PEFT.
        ("generation", generation.main, common + ([] if tiny else ["--tokens", "64", "--rounds", "3"])),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="smoke sizes, no peak subprocesses (a dry run)")
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS
    p.add_argument("--out", type=Path, default=default_out)
    p.add_argument("--only", help="comma-separated part names to run")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"machine": machine_info(args.device), "tiny": args.tiny, "parts": {}}
    only = set(args.only.split(",")) if args.only else None
    failed = False
    for name, fn, part_argv in plan(args.device, args.tiny, args.out):
        if only is not None and name not in only:
            continue
        path = args.out / f"gpu_check_{name}.json"
        print(f"== {name}: {' '.join(part_argv)}", flush=True)
        start = time.perf_counter()
        entry: dict[str, Any] = {"argv": part_argv, "json": str(path)}
        try:
            fn([*part_argv, "--json", str(path)])
            entry["ok"] = True
        except Exception:  # noqa: BLE001 - one part's failure must not lose the others' results
            entry["ok"], entry["error"] = False, traceback.format_exc()[-4000:]
            failed = True
            print(entry["error"], flush=True)
        entry["seconds"] = time.perf_counter() - start
        summary["parts"][name] = entry
        (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
