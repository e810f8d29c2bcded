"""A pre-trained backbone, a pooling step and a new linear classification head.

Backbones come from two families:

* timm image models, created with ``num_classes=0`` so that ``forward`` already returns pooled features;
* transformers encoders (``AutoModel``: BertModel and friends), pooled here by attention-mask mean
  pooling of ``last_hidden_state``, which is how sentence-transformers models such as MiniLM were trained.

The builders below construct a backbone with random weights from an architecture description only; the
registry then loads the stored weights into it strictly. Nothing here reads from a hub.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grft_core.errors import ConfigError

__all__ = [
    "TEXT_INPUT_KEYS",
    "Classifier",
    "convert_torchvision_mobilenet_v2",
    "create_timm_backbone",
    "create_transformers_backbone",
    "ensure_hub_offline",
    "feature_dim",
    "fit_timm_state",
    "fit_transformers_state",
    "load_backbone_state",
    "load_transformers_config",
    "mean_pool",
]

#: The batch keys a text backbone receives; anything else in a batch (labels, ids) is ignored.
TEXT_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def ensure_hub_offline() -> None:
    """Keep huggingface_hub off the network unless an operator set ``HF_HUB_OFFLINE`` explicitly.

    Callers also pass ``local_files_only=True``, which holds even when huggingface_hub was imported
    (and read the variable) before this runs.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def create_timm_backbone(arch: str, timm_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build a randomly initialised timm model without its classifier (``num_classes=0``).

    Args:
        arch: a timm architecture name, e.g. ``"mobilenetv2_100"``.
        timm_kwargs: extra ``timm.create_model`` arguments (model sizes, ``pretrained_cfg_overlay``).
    Returns:
        The model; its ``forward`` returns pooled features of size ``feature_dim(model)``.
    Raises:
        ConfigError: unknown architecture or arguments it does not accept (``param="arch"``).
    """
    import timm

    if not timm.is_model(arch):
        raise ConfigError(f"unknown timm architecture {arch!r}", param="arch")
    kwargs = dict(timm_kwargs or {})
    overlay = kwargs.get("pretrained_cfg_overlay")
    if isinstance(overlay, Mapping) and isinstance(overlay.get("input_size"), list):
        # JSON turns tuples into lists; timm compares input sizes as tuples.
        kwargs["pretrained_cfg_overlay"] = {**overlay, "input_size": tuple(overlay["input_size"])}
    try:
        model: nn.Module = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ConfigError(f"cannot build timm model {arch!r} with {kwargs}: {exc}", param="arch") from exc
    return model


def load_transformers_config(folder: Path) -> Any:
    """Read ``config.json`` of a local transformers folder, never running code shipped with it.

    Args:
        folder: a folder holding ``config.json``.
    Returns:
        The ``PretrainedConfig``.
    Raises:
        ConfigError: the file is missing, unreadable, or asks for custom code (``param="config_dir"``).
    """
    ensure_hub_offline()
    from transformers import AutoConfig

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} has no config.json", param="config_dir")
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        message = f"cannot read the transformers config in {folder}: {exc}"
        raise ConfigError(message, param="config_dir") from exc


def create_transformers_backbone(folder: Path) -> nn.Module:
    """Build a randomly initialised ``AutoModel`` encoder from a local folder's ``config.json``.

    The pooling layer is left out where the model class accepts ``add_pooling_layer`` because mean
    pooling replaces it (and an untrained pooler would only add unused, eligible-looking matrices).

    Args:
        folder: a folder holding ``config.json``.
    Returns:
        The encoder in fp32.
    Raises:
        ConfigError: the config cannot be read or names a model the installed transformers lacks.
    """
    from transformers import AutoModel

    config = load_transformers_config(folder)
    try:
        try:
            model: nn.Module = AutoModel.from_config(config, add_pooling_layer=False)  # type: ignore[no-untyped-call]
        except TypeError:
            model = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"no transformers model for config in {folder}: {exc}", param="config_dir") from exc
    return model.float()


def feature_dim(backbone: nn.Module, modality: str) -> int:
    """Size of the pooled features a backbone produces.

    Args:
        backbone: a timm model built with ``num_classes=0`` or a transformers encoder.
        modality: ``"image"`` (timm) or ``"text"`` (transformers).
    Returns:
        The feature width.
    """
    if modality == "text":
        return int(getattr(backbone, "config").hidden_size)  # noqa: B009 (transformers sets it, mypy cannot see it)
    # timm >= 1.0 reports the width after any pre-logits projection as head_hidden_size.
    width: Any = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features")  # noqa: B009
    return int(width)


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average token states over the positions the attention mask keeps.

    Args:
        hidden: ``(N, T, D)`` token states.
        attention_mask: ``(N, T)`` with 1 for real tokens and 0 for padding.
    Returns:
        ``(N, D)`` pooled states; an all-padding row gives zeros instead of NaN.
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    summed = (hidden * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


# --- fitting stored weights to a backbone -------------------------------------------------------------


def _fit_state(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], drop: Callable[[str], bool], what: str
) -> dict[str, Tensor]:
    """Check ``state`` against a model's state dict, key by key and shape by shape.

    Keys the model lacks are dropped when ``drop(key)`` says they belong to a part the backbone leaves
    out (classifier, pooler). A missing ``num_batches_tracked`` is taken from the model: converted
    checkpoints often omit it and it does not affect outputs, while filling it keeps the stored file equal
    to ``backbone.state_dict()``, so both fingerprint alike. Anything else raises ``ConfigError``.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            if drop(key):
                continue
            raise ConfigError(f"weights do not fit {what}: unexpected key {key!r}", param="weights")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"weights do not fit {what}: key {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected[key].shape)}",
                param="weights",
            )
        # Stored in the model's dtype (fp32), so the file, the loaded backbone and their fingerprints agree.
        out[key] = value.to(expected[key].dtype)
    for key, value in expected.items():
        if key not in out:
            if not key.endswith("num_batches_tracked"):
                raise ConfigError(f"weights do not fit {what}: missing key {key!r}", param="weights")
            out[key] = value.detach().clone()
    return out


def fit_timm_state(state: Mapping[str, Tensor], backbone: nn.Module, arch: str) -> dict[str, Tensor]:
    """Check a timm state dict against a ``num_classes=0`` backbone and drop its classifier keys.

    Args:
        state: tensors read from a weights file.
        backbone: ``create_timm_backbone(arch, ...)``.
        arch: the architecture name, for messages.
    Returns:
        The backbone's tensors only (classifier keys, as named by ``pretrained_cfg``, removed).
    Raises:
        ConfigError: an unexpected or missing key, or a shape mismatch; the message names the key.
    """
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def is_head(key: str) -> bool:
        return any(key == name or key.startswith(f"{name}.") for name in names)

    return _fit_state(state, backbone.state_dict(), is_head, arch)


def fit_transformers_state(state: Mapping[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    """Check a transformers state dict against an encoder, accepting base-model or task-model files.

    Args:
        state: tensors read from a weights file; keys may carry the task model's prefix (``bert.``).
        backbone: ``create_transformers_backbone(folder)``.
    Returns:
        The encoder's tensors only: prefix stripped, task head, pooler and stale buffers removed.
    Raises:
        ConfigError: an unexpected or missing key, or a shape mismatch; the message names the key.
    """
    expected = backbone.state_dict()
    prefix = f"{getattr(backbone, 'base_model_prefix', '')}."
    state = dict(state)
    if prefix != "." and not any(k in expected for k in state) and any(k.startswith(prefix) for k in state):
        # Saved from e.g. BertForSequenceClassification: keep the encoder, drop the task head.
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    # Buffers that state_dict() leaves out (position_ids) were saved by older transformers versions.
    non_persistent = {name for name, _ in backbone.named_buffers()} - set(expected)
    return _fit_state(
        state,
        expected,
        lambda k: k in non_persistent or k.startswith("pooler."),
        type(backbone).__name__,
    )


def load_backbone_state(backbone: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load fitted weights strictly (every key present, none extra, same shapes).

    Args:
        backbone: the module to load into.
        state: output of ``fit_timm_state`` / ``fit_transformers_state`` (or the stored file).
    Raises:
        ConfigError: missing or unexpected keys, or shape mismatches.
    """
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"weights do not fit the architecture: {exc}", param="weights") from exc


def convert_torchvision_mobilenet_v2(
    tv_state: Mapping[str, Tensor], arch: str = "mobilenetv2_100"
) -> dict[str, Tensor]:
    """Rename a torchvision MobileNetV2 state dict to timm's names, backbone only.

    Both implementations register the same tensors in the same order, so they pair one for one once
    ``num_batches_tracked`` and torchvision's ``classifier`` are set aside; every pair's shape is checked.
    ``num_batches_tracked`` (unused in eval mode) comes from the fresh timm model.

    Args:
        tv_state: ``torchvision.models.mobilenet_v2().state_dict()``-style mapping.
        arch: the timm architecture to pair with.
    Returns:
        The complete timm backbone state (``num_classes=0``), in timm's order.
    Raises:
        ConfigError: the tensor counts or any pair of shapes differ (naming both keys).
    """
    source = [(k, v) for k, v in tv_state.items() if not k.endswith("num_batches_tracked")]
    source = [(k, v) for k, v in source if not k.startswith("classifier.")]
    with torch.random.fork_rng(devices=[]):
        target = create_timm_backbone(arch).state_dict()
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(source) != len(target_keys):
        raise ConfigError(
            f"torchvision state has {len(source)} tensors, {arch} expects {len(target_keys)}", param="weights"
        )
    paired: dict[str, Tensor] = {}
    for (src_key, value), dst_key in zip(source, target_keys, strict=True):
        if value.shape != target[dst_key].shape:
            raise ConfigError(
                f"{src_key} {tuple(value.shape)} does not pair with {dst_key} {tuple(target[dst_key].shape)}",
                param="weights",
            )
        paired[dst_key] = value.detach().clone()
    return {key: paired.get(key, value) for key, value in target.items()}


def _seeded_linear(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default init, drawn from a private generator (global RNG untouched)."""
    # Built on the meta device so that nn.Linear's own init does not draw from the global RNG.
    head = nn.Linear(in_features, out_features, device="meta").to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(head.bias, -bound, bound, generator=generator)
    return head


class Classifier(nn.Module):
    """A pre-trained backbone, a pooling step and a new linear classification head.

    Image batches are ``{"pixel_values": (N, 3, H, W)}``; text batches hold ``input_ids``,
    ``attention_mask`` and optionally ``token_type_ids``. Other keys are ignored.

    Args:
        backbone: a timm model built with ``num_classes=0`` (image) or a transformers encoder (text).
        modality: ``"image"`` or ``"text"``.
        num_labels: number of output classes (>= 1).
        seed: seed of the head's initialisation; the same seed gives the same head.
        num_features: pooled feature width; inferred from the backbone when omitted.
    Raises:
        ConfigError: unknown modality or ``num_labels`` < 1.
    """

    backbone: nn.Module
    task_head: nn.Linear
    modality: str
    num_features: int

    def __init__(
        self,
        backbone: nn.Module,
        *,
        modality: str,
        num_labels: int,
        seed: int = 0,
        num_features: int | None = None,
    ) -> None:
        super().__init__()
        if modality not in ("image", "text"):
            raise ConfigError(f"modality must be 'image' or 'text', got {modality!r}", param="modality")
        if not isinstance(num_labels, int) or num_labels < 1:
            message = f"num_labels must be a positive integer, got {num_labels!r}"
            raise ConfigError(message, param="num_labels")
        self.backbone = backbone
        self.modality = modality
        self.num_features = num_features if num_features is not None else feature_dim(backbone, modality)
        self.task_head = _seeded_linear(self.num_features, num_labels, seed)
        # Text inputs the encoder's forward accepts (DistilBERT-style models take no token_type_ids).
        params = inspect.signature(backbone.forward).parameters if modality == "text" else {}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._text_keys = tuple(key for key in TEXT_INPUT_KEYS if takes_any or key in params)

    @property
    def num_labels(self) -> int:
        """Number of classes the head predicts."""
        return self.task_head.out_features

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Pooled pre-head features.

        Args:
            batch: a preprocessed batch (see the class docstring).
        Returns:
            ``(N, num_features)``.
        Raises:
            KeyError: a required input is missing from the batch.
        """
        if self.modality == "image":
            out: Tensor = self.backbone(batch["pixel_values"])
            return out
        inputs = {key: batch[key] for key in self._text_keys if key in batch}
        hidden = self.backbone(**inputs).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Class logits.

        Args:
            batch: a preprocessed batch (see the class docstring).
        Returns:
            ``(N, num_labels)`` logits, ``head(features(batch))``.
        """
        logits: Tensor = self.task_head(self.features(batch))
        return logits
