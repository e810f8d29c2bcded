"""Gradient-based selection of the rows (or columns) to train.

One pass over a subset of the training data accumulates the gradient of every eligible weight matrix
under a selection loss (supervised contrastive on two augmented views, as GPS does, or cross-entropy
through the not-yet-trained head). A row's score is the sum of its squared gradient entries; the top-k
rows of each matrix are kept. The result, a ``Selection``, can be saved, inspected and reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from grft_core.errors import ConfigError
from grft_core.method.layers import Axis, module_weight, weight_matrix_shape

ScoreMode = Literal["accumulated", "per_batch"]
SELECTION_JSON = "selection.json"
SELECTION_TENSORS = "selection.safetensors"


@dataclass
class Selection:
    """The chosen indices per module, with the scores they were chosen by.

    Attributes:
        axis: ``"rows"`` or ``"columns"`` of the ``(out, in)`` weight view.
        indices: module name → sorted int64 indices.
        scores: module name → score of every row/column (empty if not kept).
        shapes: module name → ``(out, in)`` of the weight view.
        meta: how it was made (loss, samples, score mode).
    """

    axis: Axis
    indices: dict[str, Tensor]
    scores: dict[str, Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_selected(self) -> int:
        """Rows (or columns) selected over all modules."""
        return sum(int(i.numel()) for i in self.indices.values())

    def save(self, folder: Path) -> None:
        """Write ``selection.json`` and ``selection.safetensors`` into ``folder`` (created if needed)."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"{n}.indices": i.to(torch.int64).contiguous().cpu() for n, i in self.indices.items()}
        tensors.update({f"{n}.scores": s.float().contiguous().cpu() for n, s in self.scores.items()})
        save_file(tensors, str(folder / SELECTION_TENSORS))
        doc = {"axis": self.axis, "modules": list(self.indices), "shapes": self.shapes, "meta": self.meta}
        (folder / SELECTION_JSON).write_text(json.dumps(doc, indent=2))

    @classmethod
    def load(cls, folder: Path) -> Selection:
        """Read a selection written by ``save``.

        Raises:
            FileNotFoundError: either file is missing.
        """
        doc = json.loads((folder / SELECTION_JSON).read_text())
        tensors = load_file(str(folder / SELECTION_TENSORS))
        names: list[str] = doc["modules"]
        return cls(
            axis=doc["axis"],
            indices={n: tensors[f"{n}.indices"] for n in names},
            scores={n: tensors[f"{n}.scores"] for n in names if f"{n}.scores" in tensors},
            shapes={n: (int(s[0]), int(s[1])) for n, s in doc.get("shapes", {}).items()},
            meta=doc.get("meta", {}),
        )

    def histogram(self, name: str, bins: int = 10) -> dict[str, list[float]]:
        """Histogram of one module's scores (log10 scale, since scores span many decades).

        Returns:
            ``{"edges": [...bins+1], "counts": [...bins]}``.
        Raises:
            KeyError: no scores were kept for ``name``.
        """
        s = self.scores[name].double().clamp_min(1e-30).log10()
        lo, hi = float(s.min()), float(s.max())
        if hi <= lo:
            hi = lo + 1.0
        counts = torch.histc(s, bins=bins, min=lo, max=hi)
        edges = torch.linspace(lo, hi, bins + 1)
        return {"edges": edges.tolist(), "counts": counts.tolist()}

    def summary(self) -> list[dict[str, Any]]:
        """One row per module: shape, k, the chosen indices and the share of the total score they hold."""
        rows = []
        for name, idx in self.indices.items():
            entry: dict[str, Any] = {"module": name, "k": int(idx.numel()), "indices": idx.tolist()}
            if name in self.shapes:
                entry["shape"] = list(self.shapes[name])
            if name in self.scores:
                s = self.scores[name].double()
                total = float(s.sum())
                entry["score_share"] = float(s[idx].sum()) / total if total > 0 else 0.0
            rows.append(entry)
        return rows


def scl_loss(features_a: Tensor, features_b: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over two views of a batch.

    Every sample is an anchor; its positives are the other samples with the same label in both views.

    Args:
        features_a, features_b: ``(n, d)`` pooled features of the two views.
        labels: ``(n,)`` class indices.
        temperature: the softmax temperature τ.
    Returns:
        the mean loss over anchors that have at least one positive (0 if none has).
    """
    z = F.normalize(torch.cat([features_a, features_b]).float(), dim=1)
    y = torch.cat([labels, labels])
    logits = z @ z.t() / temperature
    self_mask = torch.eye(len(y), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return z.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(pos_log_prob[has_pos] / n_pos[has_pos]).mean()


def score_modules(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    batches: Iterable[Any],
    loss_fn: Callable[[Any], Tensor],
    *,
    axis: Axis,
    score_mode: ScoreMode = "accumulated",
) -> dict[str, Tensor]:
    """Score every row (or column) of every module's weight by its squared gradient.

    Args:
        model: the network the loss runs through; every parameter's ``requires_grad`` is restored after.
        modules: name → Linear/Conv2d whose weights get scored.
        batches: anything ``loss_fn`` accepts, one item per backward pass.
        loss_fn: turns a batch into a scalar loss.
        axis: score rows (sum over inputs) or columns (sum over outputs).
        score_mode: ``accumulated`` sums the gradients over batches and then squares (GPS);
            ``per_batch`` sums each batch's squared gradients (a Fisher-style estimate).
    Returns:
        name → float32 scores of length ``out`` (rows) or ``in`` (columns).
    Raises:
        ConfigError: ``batches`` was empty.
    """
    reduce_dim = 1 if axis == "rows" else 0
    scores = squared_gradient_scores(
        model, modules, batches, loss_fn, score_mode=score_mode, reduce=lambda sq: sq.sum(reduce_dim)
    )
    return {n: s.cpu() for n, s in scores.items()}


def squared_gradient_scores(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    batches: Iterable[Any],
    loss_fn: Callable[[Any], Tensor],
    *,
    score_mode: ScoreMode,
    reduce: Callable[[Tensor], Tensor],
) -> dict[str, Tensor]:
    """The gradient pass behind every selection: ``reduce`` of squared weight gradients, per module.

    Args:
        model: the network the loss runs through; every parameter's ``requires_grad`` is restored after.
        modules: name → Linear/Conv2d whose weights get scored.
        batches: anything ``loss_fn`` accepts, one item per backward pass.
        loss_fn: turns a batch into a scalar loss.
        score_mode: ``accumulated`` squares the gradient summed over batches; ``per_batch`` sums each
            batch's squared gradient.
        reduce: maps an ``(out, in)`` float32 matrix of squared gradients to the scores kept (a sum over
            rows or columns for GRFT, the identity for per-entry GPS scores).
    Returns:
        name → float32 scores, on the weights' device.
    Raises:
        ConfigError: ``batches`` was empty.
    """
    weights = {n: module_weight(m) for n, m in modules.items()}
    shapes = {n: weight_matrix_shape(modules[n]) for n in weights}
    sums: dict[str, Tensor] = {}  # accumulated mode: the gradients summed over batches
    scores: dict[str, Tensor] = {}  # per-batch mode: the reduced squares summed over batches
    seen = 0
    # Only the scored weights need gradients: freezing the rest saves their backward work and keeps
    # the pass from leaving stale .grad on the head or biases for the first training step.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
            w.grad = None
        for batch in batches:
            loss_fn(batch).backward()  # type: ignore[no-untyped-call]
            seen += 1
            with torch.no_grad():
                for n, w in weights.items():
                    if w.grad is None:
                        continue
                    g = w.grad.float().view(shapes[n])
                    if score_mode == "accumulated":
                        if n in sums:
                            sums[n].add_(g)
                        else:
                            sums[n] = g.clone()
                    else:
                        sq = reduce(g.pow(2))
                        scores[n] = scores[n].add_(sq) if n in scores else sq
                    w.grad = None
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
    if seen == 0:
        raise ConfigError("the selection pass got no batches", param="selection_samples")
    out = {}
    for n, w in weights.items():
        zero = torch.zeros(shapes[n], device=w.device)  # a weight the loss never reached scores 0
        if score_mode == "accumulated":
            out[n] = reduce(sums.get(n, zero).pow(2))
        else:
            out[n] = scores[n] if n in scores else reduce(zero)
    return out


def select_top_k(
    scores: Mapping[str, Tensor],
    k_for: Callable[[str], int],
    axis: Axis,
    shapes: Mapping[str, tuple[int, int]],
    meta: Mapping[str, Any] | None = None,
) -> Selection:
    """Keep the ``k`` highest-scoring rows/columns of each module (k capped at the axis length).

    Ties break toward the lower index so the choice is deterministic.

    Raises:
        ConfigError: k exceeds the axis length of every module (the request cannot be meant).
    """
    indices: dict[str, Tensor] = {}
    lengths = []
    for name, s in scores.items():
        k = k_for(name)
        if k <= 0:
            continue
        lengths.append(len(s))
        order = torch.sort(s, descending=True, stable=True).indices
        indices[name] = order[: min(k, len(s))].sort().values
    if not indices:
        raise ConfigError("k selects nothing: no eligible module is named by the k map", param="k")
    if all(k_for(n) > len(s) for n, s in scores.items() if n in indices):
        raise ConfigError(
            f"k is larger than every eligible matrix's {axis} count (largest is {max(lengths)})", param="k"
        )
    return Selection(
        axis=axis,
        indices=indices,
        scores={n: scores[n] for n in indices},
        shapes={n: shapes[n] for n in indices},
        meta=dict(meta or {}),
    )
