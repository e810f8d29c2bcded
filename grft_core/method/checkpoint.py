"""Training checkpoints that resume exactly: trainable tensors, optimizer, scheduler, RNG and position.

A checkpoint is a folder ``step-00000123`` written under a temporary name and renamed when complete,
so a crash mid-write leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from grft_core.models.serialization import safe_torch_load

PREFIX = "step-"


@dataclass
class TrainState:
    """Where a run is: the next (epoch, batch) to train, optimizer steps taken, history so far."""

    step: int
    epoch: int
    batch_in_epoch: int
    history: list[dict[str, Any]]
    best: dict[str, Any]
    scheduler: dict[str, Any]


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's trainable tensors by name (what a checkpoint must restore)."""
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    root: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    best_tensors: dict[str, Tensor] | None,
    keep: int = 2,
) -> Path:
    """Write one complete checkpoint and prune older ones (the newest ``keep`` stay).

    Returns:
        the checkpoint folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    if best_tensors:
        save_file(best_tensors, str(tmp / "best.safetensors"))
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state.__dict__, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[TrainState, dict[str, Tensor] | None]:
    """Restore trainable tensors, optimizer state and RNG from ``folder``.

    Returns:
        the run position and the best-epoch tensors (if any were saved).
    Raises:
        KeyError: the checkpoint names a tensor the model does not train (another config).
    """
    tensors = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if name not in params:
                raise KeyError(f"checkpoint tensor {name} is not a parameter of this model")
            params[name].copy_(value)
    blob = safe_torch_load(folder / "optimizer.pt")
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["rng"]["cpu"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    state = TrainState(**json.loads((folder / "state.json").read_text()))
    best_file = folder / "best.safetensors"
    best = load_file(str(best_file)) if best_file.exists() else None
    return state, best
