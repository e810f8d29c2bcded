"""A short real fine-tune through ``grft_core.pipeline.train_to_folder``, for the GPU check.

The packaged ImageNet MobileNetV2 (``mobilenetv2_100``) on scikit-learn's digits at 32 px, the demo's
task, with GRFT rows (k=4) and, for comparison, the GPS-style baseline: the whole product path (data
loading, selection pass, training with bf16 autocast on CUDA, adapter writing). ``--tiny`` uses the
random-init ``tiny-cnn`` on 40 digits for one epoch. Reports accuracy, wall time and adapter bytes.

Usage::

    uv run --frozen python -m bench.finetune_check [--device cpu|cuda] [--quick] [--tiny] [--json PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from bench.common import add_common_args, command_line, machine_info, setup_torch, write_report
from grft_core import GRFTConfig
from grft_core.data import digits_image_folder
from grft_core.pipeline import train_to_folder

METHODS = ("grft", "gps")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.finetune_check", description=__doc__.split("\n")[0])
    add_common_args(p, "finetune_check")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated grft_core methods")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_torch(args.threads)
    model = "tiny-cnn" if args.tiny else "mobilenetv2_100"
    per_class = 4 if args.tiny else 40 if args.quick else None
    epochs = 1 if args.tiny else 3
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="grft-finetune-check-") as work:
        data = digits_image_folder(Path(work), size=32, limit_per_class=per_class)
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            config = GRFTConfig(
                method=cast(Any, method), k=4, gps_per_row=4, epochs=epochs, batch_size=32, lr=3e-3,
                image_size=16 if args.tiny else 32, device=cast(Any, args.device),
            )  # fmt: skip
            metrics = train_to_folder(model, str(data), Path(work) / f"adapter-{method}", config)
            runs[method] = {k: v for k, v in metrics.items() if k != "history"}
    report: dict[str, Any] = {
        "command": command_line("bench.finetune_check", argv),
        "machine": machine_info(args.device),
        "settings": {"model": model, "data": "digits", "per_class": per_class, "epochs": epochs},
        "runs": runs,
    }
    lines = [
        "| method | best val accuracy | wall s | trainable params | adapter bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, r in runs.items():
        lines.append(
            f"| {method} | {r['best_val_accuracy']:.3f} | {r['wall_time_s']:.1f} | {r['trainable_params']:,} "
            f"| {r['adapter_bytes']:,} |"
        )
    write_report(report, args.json, "\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
