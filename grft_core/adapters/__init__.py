"""Adapters: the saved artifact of a run (PEFT file names), applying and merging it, and its exact
export as a PEFT LoRA adapter."""

from grft_core.adapters.format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Adapter,
    adapter_tensors,
    apply_adapter,
    backbone_fingerprint,
    load_adapter,
    merge,
    merged_copy,
    save_adapter,
    unmerge,
)
from grft_core.adapters.peft import export_peft_lora

__all__ = [
    "Adapter",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "adapter_tensors",
    "apply_adapter",
    "backbone_fingerprint",
    "export_peft_lora",
    "load_adapter",
    "merge",
    "merged_copy",
    "save_adapter",
    "unmerge",
]
