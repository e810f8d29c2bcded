"""Preparing a classifier for one training method: which parameters train, and the L2 term.

``grft`` and ``masked_dense`` share a selection and an L2 set; ``grft`` trains compact deltas while
``masked_dense`` (the paper's formulation) trains whole matrices through masked gradients. ``gps`` (the
GPS-style baseline, ``grft_core.method.gps``) selects single entries per row and trains them the masked-dense
way. ``full``, ``linear_probe`` and ``lora`` are the baselines users would otherwise pick.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from grft_core.cancel import ShouldStop, check_stop, stop_checks
from grft_core.errors import ConfigError
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.gps import apply_gps, score_entries, select_per_row
from grft_core.method.layers import module_weight, weight_matrix_shape
from grft_core.method.model import (
    HEAD,
    apply_grft,
    apply_masked_dense,
    dense_l2,
    eligible_modules,
    freeze,
    freeze_norm_stats,
    grft_l2,
    head_l2,
    l2_module_names,
)
from grft_core.method.selection import Selection, scl_loss, score_modules, select_top_k

#: Methods whose training needs a selection pass first.
SELECTION_METHODS = ("grft", "masked_dense", "gps")

_T = TypeVar("_T")


@dataclass
class Prepared:
    """A model made ready for one method.

    Attributes:
        selection: the rows/columns chosen (grft and masked_dense) or the entries (gps).
        regularizer: returns the un-scaled L2 term (multiply by λ), or None when the method has none.
        head_init: the head's initial parameters, the anchor of its L2 term.
    """

    selection: Selection | None = None
    regularizer: Callable[[], Tensor] | None = None
    head_init: dict[str, Tensor] = field(default_factory=dict)


def compute_selection(
    model: nn.Module,
    source: BatchSource,
    config: GRFTConfig,
    *,
    generator_seed: int | None = None,
    should_stop: ShouldStop | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Selection:
    """Run the selection pass over ``config.selection_samples`` items of ``source``.

    With ``config.selection_strategy == "random"`` no data is read: each module's k rows/columns are a
    seeded random draw (the control that shows what the gradient scores add).

    Args:
        model: the classifier (``features`` and ``task_head``), on its device.
        source: the training data.
        config: k, axis, selection loss, samples, batch size, score mode.
        generator_seed: seed of the sample draw and the augmentations (defaults to ``config.seed``).
        should_stop: asked before every batch of the pass (besides any check already installed, see
            ``grft_core.cancel``).
        on_progress: called with ``(batches done, batches in all)`` after each batch of the pass.
    Returns:
        the selection (indices sorted, scores kept for inspection).
    Raises:
        ConfigError: k exceeds every matrix, or the k map names no module.
        TrainingInterrupted: ``should_stop`` returned True.
    """
    seed, modules = _pass_seed_and_modules(model, config, generator_seed)
    shapes = {name: weight_matrix_shape(m) for name, m in modules.items()}
    if config.selection_strategy == "random":
        return random_selection(shapes, config, seed)
    if config.selection_strategy == "magnitude":
        return magnitude_selection(modules, config)
    batches, loss_fn, n = _pass_inputs(model, source, config, seed)
    axis, score_mode = config.axis, config.score_mode
    counted = _counted(batches, on_progress)
    scores = _in_pass_mode(
        model,
        should_stop,
        lambda: score_modules(model, modules, counted, loss_fn, axis=axis, score_mode=score_mode),
    )
    meta: dict[str, Any] = {"selection_strategy": "gradient", **_pass_meta(config, n, seed)}
    return select_top_k(scores, config.k_for, config.axis, shapes, meta)


def random_selection(shapes: dict[str, tuple[int, int]], config: GRFTConfig, seed: int) -> Selection:
    """Choose ``k`` distinct rows/columns of each matrix uniformly at random, reproducibly.

    Each index gets a uniform score from one generator seeded with ``seed``, drawn module by module in
    ``shapes`` order, and the top-k scores win: the same k map, capping and errors as the gradient path.

    Args:
        shapes: module name → ``(out, in)`` of its weight view, in a fixed order.
        config: k (or the k map) and the axis.
        seed: seeds the draw; the same seed gives the same selection.
    Returns:
        the selection, with the random draws kept as its scores.
    Raises:
        ConfigError: k exceeds every matrix, or the k map names no module.
    """
    # An offset keeps this draw independent of the training shuffles that also start from ``seed``.
    g = torch.Generator().manual_seed(seed + 7919)
    dim = 0 if config.axis == "rows" else 1
    scores = {name: torch.rand(shape[dim], generator=g) for name, shape in shapes.items()}
    meta = {"selection_strategy": "random", "seed": seed}
    return select_top_k(scores, config.k_for, config.axis, shapes, meta)


def magnitude_selection(modules: dict[str, nn.Module], config: GRFTConfig) -> Selection:
    """Choose the ``k`` rows/columns of each matrix with the largest L2 norm of the pre-trained weights.

    The data-free ablation between the random draw and the gradient pass: it asks whether "big rows"
    are what the gradient scores find. A convolution's rows are its output channels (norm over input
    channels and kernel), its columns the flattened ``in/groups · kh · kw`` positions.

    Args:
        modules: module name → eligible ``nn.Linear``/``nn.Conv2d``, in a fixed order.
        config: k (or the k map) and the axis.
    Returns:
        the selection, with the norms kept as its scores.
    Raises:
        ConfigError: k exceeds every matrix, or the k map names no module.
    """
    dim = 1 if config.axis == "rows" else 0
    scores: dict[str, Tensor] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in modules.items():
        shapes[name] = weight_matrix_shape(module)
        matrix = module_weight(module).detach().float().reshape(shapes[name][0], -1)
        scores[name] = matrix.norm(dim=dim).cpu()
    meta = {"selection_strategy": "magnitude"}
    return select_top_k(scores, config.k_for, config.axis, shapes, meta)


def compute_gps_selection(
    model: nn.Module,
    source: BatchSource,
    config: GRFTConfig,
    *,
    generator_seed: int | None = None,
    should_stop: ShouldStop | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Selection:
    """The GPS-style selection pass: the top ``config.gps_per_row`` entries of every row by gradient.

    The same data draw, loss (``selection_loss``), batch size and ``score_mode`` as ``compute_selection``;
    scores are kept per entry instead of per row, and not stored in the result (they are weight-sized).

    Args:
        model: the classifier (``features`` and ``task_head``), on its device.
        source: the training data.
        config: ``gps_per_row``, selection loss, samples, batch size, score mode.
        generator_seed: seed of the sample draw and the augmentations (defaults to ``config.seed``).
        should_stop: asked before every batch of the pass, like ``compute_selection``'s.
        on_progress: called with ``(batches done, batches in all)`` after each batch of the pass.
    Returns:
        a GPS selection (``grft_core.method.gps``): ``(out, K)`` column indices per eligible module.
    Raises:
        ConfigError: the pass got no batches.
        TrainingInterrupted: ``should_stop`` returned True.
    """
    seed, modules = _pass_seed_and_modules(model, config, generator_seed)
    batches, loss_fn, n = _pass_inputs(model, source, config, seed)
    counted = _counted(batches, on_progress)
    scores = _in_pass_mode(
        model,
        should_stop,
        lambda: score_entries(model, modules, counted, loss_fn, score_mode=config.score_mode),
    )
    return select_per_row(scores, config.gps_per_row, _pass_meta(config, n, seed))


def _counted(batches: Sequence[_T], on_progress: Callable[[int, int], None] | None) -> Iterator[_T]:
    """``batches``, reporting ``(done, total)`` once each batch's backward pass has run (the scorer
    asks for the next batch only then)."""
    for done, batch in enumerate(batches, 1):
        yield batch
        if on_progress is not None:
            on_progress(done, len(batches))


def _pass_seed_and_modules(
    model: nn.Module, config: GRFTConfig, generator_seed: int | None
) -> tuple[int, dict[str, nn.Module]]:
    """The selection pass's seed (``generator_seed``, else ``config.seed``) and the modules it scores."""
    seed = config.seed if generator_seed is None else generator_seed
    modules = eligible_modules(
        model, include_depthwise=config.include_depthwise, include_patch_embed=config.include_patch_embed
    )
    return seed, modules


def _in_pass_mode(model: nn.Module, should_stop: ShouldStop | None, score: Callable[[], _T]) -> _T:
    """``score()`` with ``model`` in the selection pass's mode and ``should_stop`` installed; the
    model's train/eval mode is restored after."""
    was_training = model.training
    # Train mode so dropout provides the second "view" of text; norms keep their pre-trained statistics.
    model.train()
    freeze_norm_stats(model)
    try:
        with stop_checks(should_stop):
            return score()
    finally:
        model.train(was_training)


def _pass_meta(config: GRFTConfig, n: int, seed: int) -> dict[str, Any]:
    """What a gradient selection records about its pass (GRFT's and GPS's alike)."""
    return {
        "selection_loss": config.selection_loss,
        "samples": n,
        "score_mode": config.score_mode,
        "seed": seed,
    }


def _pass_inputs(
    model: nn.Module, source: BatchSource, config: GRFTConfig, seed: int
) -> tuple[list[Tensor], Callable[[Tensor], Tensor], int]:
    """The selection pass's batches (index tensors), its loss and its sample count.

    Shared by ``compute_selection`` and ``compute_gps_selection``, so GPS and GRFT score on the same data.
    """
    n = len(source) if config.selection_samples is None else min(config.selection_samples, len(source))
    g = torch.Generator().manual_seed(seed + 17)
    chosen = torch.randperm(len(source), generator=g)[:n]
    bs = config.selection_batch_size
    batches = [chosen[i : i + bs] for i in range(0, n, bs)]

    def loss_fn(idx: Tensor) -> Tensor:
        # Once per batch: the pass over a large dataset is where a cancel used to go unheard.
        check_stop()
        if config.selection_loss == "ce":
            inputs, labels = source.batch(idx)
            return nn.functional.cross_entropy(model(inputs), labels)
        labels = source.labels[idx].to(source.device)
        items = [source.items[int(i)] for i in idx]
        pre = source.preprocessor
        view_a = {k: v.to(source.device) for k, v in pre.augment(items, g).items()}
        view_b = {k: v.to(source.device) for k, v in pre.augment(items, g).items()}
        features = cast(Callable[[dict[str, Tensor]], Tensor], model.features)
        return scl_loss(features(view_a), features(view_b), labels, config.scl_temperature)

    return batches, loss_fn, n


def prepare(model: nn.Module, config: GRFTConfig, selection: Selection | None) -> Prepared:
    """Set which parameters train for ``config.method`` and build its L2 term.

    Args:
        model: the classifier; modified in place (wrapped layers, LoRA layers, frozen parameters).
        config: the run's config.
        selection: required for ``grft``, ``masked_dense`` and ``gps`` (a GPS selection for ``gps``).
    Returns:
        the regulariser and head anchor the trainer needs.
    Raises:
        ValueError: a selection-based method without a selection.
    """
    # A causal LM has no task head: its output projection stays the base model's.
    head: nn.Module | None = getattr(model, HEAD, None)
    head_init = {n: p.detach().clone() for n, p in head.named_parameters()} if head is not None else {}
    method = config.method
    if method in ("grft", "masked_dense"):
        if selection is None:
            raise ValueError(f"method {method!r} needs a selection")
        l2_names = l2_module_names(selection.indices, config.l2_layers)
        if method == "grft":
            apply_grft(model, selection.indices, selection.axis, train_bias=config.train_bias)

            def regularizer() -> Tensor:
                return grft_l2(model, l2_names) + head_l2(model, head_init)

        else:
            apply_masked_dense(model, selection.indices, selection.axis, train_bias=config.train_bias)
            # The paper's term needs a copy of every regularised pre-trained matrix.
            pre = {n: module_weight(model.get_submodule(n)).detach().clone() for n in l2_names}

            def regularizer() -> Tensor:
                return dense_l2(model, pre) + head_l2(model, head_init)

        return Prepared(selection=selection, regularizer=regularizer, head_init=head_init)
    if method == "gps":
        if selection is None:
            raise ValueError("method 'gps' needs a selection")
        apply_gps(model, selection.indices, train_bias=config.train_bias)
        # Like masked-dense: L2 toward copies of the pre-trained matrices of the regularised set.
        gps_pre = {
            n: module_weight(model.get_submodule(n)).detach().clone()
            for n in l2_module_names(selection.indices, config.l2_layers)
        }

        def gps_regularizer() -> Tensor:
            return dense_l2(model, gps_pre) + head_l2(model, head_init)

        return Prepared(selection=selection, regularizer=gps_regularizer, head_init=head_init)
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "linear_probe":
        if head is None:
            raise ConfigError("linear_probe trains a task head, and this model has none", param="method")
        freeze(model)
        for p in head.parameters():
            p.requires_grad_(True)
    elif method == "lora":
        inject_lora(model, config)
    return Prepared(head_init=head_init)


def inject_lora(model: nn.Module, config: GRFTConfig) -> list[str]:
    """Add PEFT LoRA layers (rank ``config.lora_rank``) to the eligible matrices, in place.

    Returns:
        the targeted module names.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(
        eligible_modules(model, include_depthwise=False, include_patch_embed=config.include_patch_embed)
    )
    # A regex string is matched against whole module names; a list would match by name suffix and
    # catch nested modules that merely share a name with a top-level one.
    pattern = "^(" + "|".join(re.escape(t) for t in targets) + ")$"
    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # PEFT annotates int, accepts float
        lora_dropout=0.0,
        target_modules=pattern,
    )
    inject_adapter_in_model(lora_config, model)
    freeze(model)
    for name, p in model.named_parameters():
        if "lora_" in name or name.startswith(HEAD + "."):
            p.requires_grad_(True)
    return targets


def uses_frozen_norms(config: GRFTConfig) -> bool:
    """Whether norm layers keep pre-trained statistics during training (all but full fine-tuning)."""
    return config.method != "full"
