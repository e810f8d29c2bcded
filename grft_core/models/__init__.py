"""Base models: the local model store (registry), the classifier built on a backbone, safe tensor
serialization and tokenizer files."""

from grft_core.models.classifier import TEXT_INPUT_KEYS, Classifier, create_timm_backbone, mean_pool
from grft_core.models.registry import BUILTIN_MODELS, ModelRegistry, ModelSpec, default_store_dir
from grft_core.models.serialization import fingerprint_state_dict, safe_torch_load, save_safetensors_atomic
from grft_core.models.tokenizers import load_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "Classifier",
    "ModelRegistry",
    "ModelSpec",
    "TEXT_INPUT_KEYS",
    "create_timm_backbone",
    "default_store_dir",
    "fingerprint_state_dict",
    "load_tokenizer",
    "mean_pool",
    "safe_torch_load",
    "save_safetensors_atomic",
]
