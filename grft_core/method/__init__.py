"""The method: its typed config, gradient-based selection, the layer wrappers that train only the
selected rows or columns, the model-level operations, the trainer and the baselines it compares to."""

from grft_core.method.batching import BatchSource
from grft_core.method.checkpoint import list_checkpoints
from grft_core.method.config import GRFTConfig, Precision, ScoreMode, SelectionLoss
from grft_core.method.evaluation import evaluate, predict_proba
from grft_core.method.gps import (
    add_gps_tensors,
    apply_gps,
    entry_masks,
    gps_adapter_tensors,
    is_gps_selection,
    score_entries,
    select_per_row,
)
from grft_core.method.layers import Axis, GRFTLayer, module_weight, weight_matrix_shape
from grft_core.method.model import (
    HEAD,
    apply_grft,
    apply_masked_dense,
    block_key,
    count_parameters,
    dense_l2,
    eligible_modules,
    freeze,
    grft_l2,
    grft_layers,
    head_l2,
    l2_module_names,
    merge_all,
    remove_grft,
    unmerge_all,
)
from grft_core.method.selection import Selection, scl_loss, score_modules, select_top_k
from grft_core.method.setup import compute_gps_selection, compute_selection, inject_lora, prepare
from grft_core.method.trainer import EpochMetrics, StepInfo, TrainResult, fit, lr_factor

__all__ = [
    "Axis",
    "Axis",
    "BatchSource",
    "EpochMetrics",
    "GRFTConfig",
    "GRFTLayer",
    "HEAD",
    "Precision",
    "ScoreMode",
    "Selection",
    "SelectionLoss",
    "StepInfo",
    "TrainResult",
    "add_gps_tensors",
    "apply_gps",
    "apply_grft",
    "apply_masked_dense",
    "block_key",
    "compute_gps_selection",
    "compute_selection",
    "count_parameters",
    "dense_l2",
    "eligible_modules",
    "entry_masks",
    "evaluate",
    "fit",
    "freeze",
    "gps_adapter_tensors",
    "grft_l2",
    "grft_layers",
    "head_l2",
    "inject_lora",
    "is_gps_selection",
    "l2_module_names",
    "list_checkpoints",
    "lr_factor",
    "merge_all",
    "module_weight",
    "predict_proba",
    "prepare",
    "remove_grft",
    "scl_loss",
    "score_entries",
    "score_modules",
    "select_per_row",
    "select_top_k",
    "unmerge_all",
    "weight_matrix_shape",
]
