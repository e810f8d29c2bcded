"""Turning raw items (PIL images, strings) into the tensors a backbone expects.

The numbers come from the model, not from us: image mean, std, interpolation, crop fraction and input
size are timm's resolved data config of the architecture; text uses the tokenizer stored in the model's
folder. Only the spatial size may be overridden (small inputs such as 32 px digits train fast on CPU).

Each preprocessor has a deterministic eval transform (``__call__``) and one random augmented view
(``augment``) for contrastive row selection. The augmented view draws every random number from the
``torch.Generator`` it is given, so a selection pass is reproducible from its seed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from grft_core.errors import ConfigError, DatasetRejected
from grft_core.method.options import check_option
from grft_core.models.classifier import TEXT_INPUT_KEYS, create_timm_backbone
from grft_core.models.registry import ModelSpec
from grft_core.models.tokenizers import load_tokenizer

__all__ = [
    "ImagePreprocessor",
    "Preprocessor",
    "TextPreprocessor",
    "make_preprocessor",
    "preprocessor_from_dict",
    "text_prefix",
]

#: Text default cap: long enough for sentences and news leads, short enough for CPU attention cost.
DEFAULT_MAX_LENGTH = 256
# Augmented view: crops keep at least 60% of the area so that a digit or a word stays recognisable;
# jitter of +-20% changes the look without changing the class. No flips: they change digits and text.
CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.2


class Preprocessor(Protocol):
    """What every preprocessor offers; ``modality`` is ``"image"`` or ``"text"``."""

    modality: str

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        """Deterministic eval transform of a batch of items."""
        ...

    def augment(self, items: Sequence[Any], generator: torch.Generator) -> dict[str, Tensor]:
        """One random augmented view of a batch, random only through ``generator``."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, stored in adapter configs."""
        ...


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, high: int) -> int:
    """A uniform integer in ``[0, high]``."""
    return int(torch.randint(0, high + 1, (), generator=generator))


class ImagePreprocessor:
    """Resize, center crop and normalise images the way timm evaluates the model.

    Args:
        input_size: ``(3, H, W)`` output size.
        mean: per-channel mean.
        std: per-channel std.
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
        crop_pct: fraction of the resized image kept by the center crop.
        crop_mode: ``"center"`` (resize the shorter side) or ``"squash"`` (resize both sides).
    """

    modality = "image"

    def __init__(
        self,
        *,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
        crop_mode: str = "center",
    ) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]), int(input_size[2]))
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        # timm's "random" interpolation is a training-time augmentation; evaluation uses bilinear.
        known = interpolation in ("bicubic", "bilinear", "nearest")
        self.interpolation = interpolation if known else "bilinear"
        self.crop_pct = float(crop_pct)
        self.crop_mode = crop_mode if crop_mode in ("center", "squash") else "center"
        self._mode = InterpolationMode(self.interpolation)

    @staticmethod
    def _rgb(item: Any) -> Image.Image:
        if not isinstance(item, Image.Image):
            raise DatasetRejected(f"expected a PIL image, got {type(item).__name__}", param="image")
        return item if item.mode == "RGB" else item.convert("RGB")

    def _finish(self, images: list[Tensor]) -> dict[str, Tensor]:
        """Stack uint8/float images in [0, 1] and normalise."""
        if not images:
            return {"pixel_values": torch.empty(0, *self.input_size)}
        batch = torch.stack([F.to_dtype(img, torch.float32, scale=True) for img in images])
        pixels: Tensor = F.normalize(batch, self.mean, self.std)
        return {"pixel_values": pixels}

    def _eval_one(self, img: Image.Image) -> Tensor:
        height, width = self.input_size[1:]
        scale = (math.floor(height / self.crop_pct), math.floor(width / self.crop_pct))
        if self.crop_mode == "squash" or height != width:
            img = F.resize(img, list(scale), interpolation=self._mode, antialias=True)
        else:
            img = F.resize(img, [scale[0]], interpolation=self._mode, antialias=True)  # shorter side
        pixels: Tensor = F.pil_to_tensor(F.center_crop(img, [height, width]))
        return pixels

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        """Eval transform.

        Args:
            items: PIL images (any mode; converted to RGB).
        Returns:
            ``{"pixel_values": (N, 3, H, W) float32}``.
        Raises:
            DatasetRejected: an item is not a PIL image.
        """
        return self._finish([self._eval_one(self._rgb(item)) for item in items])

    def _crop_box(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """Random-resized-crop box ``(top, left, h, w)``: scale 0.6-1.0 of the area, ratio 3/4-4/3."""
        area = width * height
        log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
        for _ in range(10):
            target = area * _uniform(generator, *CROP_SCALE)
            ratio = math.exp(_uniform(generator, *log_ratio))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                return _randint(generator, height - h), _randint(generator, width - w), h, w
        return 0, 0, height, width  # very elongated images: keep them whole

    def augment(self, items: Sequence[Any], generator: torch.Generator) -> dict[str, Tensor]:
        """One augmented view: random resized crop, then brightness/contrast/saturation jitter.

        Args:
            items: PIL images.
            generator: the only source of randomness; the same generator state gives the same view.
        Returns:
            ``{"pixel_values": (N, 3, H, W) float32}``, same size as the eval transform.
        Raises:
            DatasetRejected: an item is not a PIL image.
        """
        out = []
        for item in items:
            img = self._rgb(item)
            top, left, h, w = self._crop_box(img.width, img.height, generator)
            img = F.resized_crop(
                img, top, left, h, w, list(self.input_size[1:]), interpolation=self._mode, antialias=True
            )
            x = F.to_dtype(F.pil_to_tensor(img), torch.float32, scale=True)
            x = F.adjust_brightness(x, _uniform(generator, 1 - JITTER, 1 + JITTER))
            x = F.adjust_contrast(x, _uniform(generator, 1 - JITTER, 1 + JITTER))
            x = F.adjust_saturation(x, _uniform(generator, 1 - JITTER, 1 + JITTER))
            out.append(x)
        return self._finish(out)

    def to_dict(self) -> dict[str, Any]:
        """The settings, enough to rebuild this preprocessor with ``preprocessor_from_dict``."""
        return {
            "modality": self.modality,
            "input_size": list(self.input_size),
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }


#: First window, in characters per token kept (English averages 4-6 characters a token).
CHARS_PER_TOKEN = 8
#: Largest window, in characters per token kept: bounds a text's tokenisation cost whatever it holds.
MAX_CHARS_PER_TOKEN = 256
_LAST_SPACE = re.compile(r"\s\S*\Z")


def text_prefix(tokenizer: Any, text: str, max_length: int) -> str:
    """The shortest tried prefix of ``text`` whose tokens cover the ``max_length`` the model keeps.

    Args:
        tokenizer: a transformers tokenizer.
        text: the raw text.
        max_length: the truncation length in tokens (special tokens included).
    Returns:
        ``text`` itself when it is short, else a prefix cut just before a whitespace character.
    """
    keep = max(1, max_length - int(tokenizer.num_special_tokens_to_add()))
    window = max_length * CHARS_PER_TOKEN
    largest = max_length * MAX_CHARS_PER_TOKEN
    while window < len(text):
        space = _LAST_SPACE.search(text, window // 2, window + 1)
        prefix = text[: space.start()] if space is not None else text[:window]
        # One token more than kept: the last word of the prefix ends at the cut either way.
        if (space is not None and len(tokenizer.tokenize(prefix)) > keep) or window >= largest:
            return prefix
        window *= 2
    return text


class TextPreprocessor:
    """Tokenise strings: pad to the longest in the batch, truncate at ``max_length``.

    A text much longer than ``max_length`` tokens can use is cut first (see :meth:`usable_text`), so
    the cost of tokenizing follows ``max_length``, not the input.

    Args:
        tokenizer: a transformers tokenizer.
        max_length: truncation length in tokens.
    """

    modality = "text"

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        """Tokenise a batch.

        Args:
            items: strings.
        Returns:
            ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model uses them), ``(N, T)``.
        Raises:
            DatasetRejected: an item is not a string.
        """
        texts = list(items)
        for text in texts:
            if not isinstance(text, str):
                raise DatasetRejected(f"expected a string, got {type(text).__name__}", param="text")
        texts = [self.usable_text(text) for text in texts]
        if not texts:  # tokenizers fail on an empty batch
            empty = torch.empty(0, 0, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        encoded = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {key: encoded[key] for key in TEXT_INPUT_KEYS if key in encoded}

    def usable_text(self, text: str) -> str:
        """The part of ``text`` its truncated tokens come from (see :func:`text_prefix`)."""
        return text_prefix(self.tokenizer, text, self.max_length)

    def augment(self, items: Sequence[Any], generator: torch.Generator) -> dict[str, Tensor]:
        """Same as ``__call__``: for text the second view comes from dropout in the encoder."""
        return self(items)

    def to_dict(self) -> dict[str, Any]:
        """The settings stored in adapter configs."""
        return {
            "modality": self.modality,
            "tokenizer": type(self.tokenizer).__name__,
            "max_length": self.max_length,
            "padding": "longest",
            "truncation": True,
        }


def _text_limit(folder: Path, tokenizer: Any) -> int:
    """Longest input the model can take: the tokenizer's limit and the config's position embeddings."""
    limit = int(tokenizer.model_max_length) if tokenizer.model_max_length else 1 << 30
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    positions = config.get("max_position_embeddings")
    return min(limit, int(positions)) if isinstance(positions, int) else limit


def _make_text(spec: ModelSpec, max_length: int | None) -> TextPreprocessor:
    folder = Path(spec.config_dir or "")
    tokenizer = load_tokenizer(folder)
    limit = _text_limit(folder, tokenizer)
    if max_length is None:
        return TextPreprocessor(tokenizer, min(limit, DEFAULT_MAX_LENGTH))
    if not isinstance(max_length, int) or not 1 <= max_length <= limit:
        raise ConfigError(f"max_length must be between 1 and {limit}, got {max_length!r}", param="max_length")
    return TextPreprocessor(tokenizer, max_length)


def _image_config(spec: ModelSpec) -> dict[str, Any]:
    """timm's resolved data config of the spec's architecture, plus whether its input size is fixed."""
    from timm.data.config import resolve_data_config

    with torch.random.fork_rng(devices=[]):
        model = create_timm_backbone(spec.arch or "", spec.timm_kwargs)
    config = dict(resolve_data_config(model=model))  # type: ignore[no-untyped-call]
    config["fixed_input_size"] = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False))
    return config


def make_preprocessor(
    spec: ModelSpec, *, image_size: int | None = None, max_length: int | None = None
) -> Preprocessor:
    """The preprocessor a registry model expects.

    Args:
        spec: the model's registry entry.
        image_size: square spatial size overriding the model's (image models only).
        max_length: truncation length (text models only); default ``min(model limit, 256)``.
    Returns:
        An ``ImagePreprocessor`` or ``TextPreprocessor``.
    Raises:
        ConfigError: ``image_size`` out of its declared bounds or different from a fixed-size model's input,
            ``max_length`` out of range, or the model's tokenizer/architecture cannot be loaded.
    """
    if spec.modality == "text":
        return _make_text(spec, max_length)
    config = _image_config(spec)
    input_size = list(config["input_size"])
    if image_size is not None:
        check_option("image_size", image_size)  # its declared bounds, as a config would check them
        if config["fixed_input_size"] and [image_size, image_size] != input_size[1:]:
            raise ConfigError(
                f"{spec.name} only accepts {input_size[1]}x{input_size[2]} images, not {image_size}",
                param="image_size",
            )
        input_size = [3, image_size, image_size]
    return ImagePreprocessor(
        input_size=input_size,
        mean=config["mean"],
        std=config["std"],
        interpolation=config["interpolation"],
        crop_pct=config["crop_pct"],
        crop_mode=config.get("crop_mode", "center"),
    )


def preprocessor_from_dict(d: Mapping[str, Any], spec: ModelSpec) -> Preprocessor:
    """Rebuild a preprocessor from its ``to_dict`` output (e.g. from an adapter config).

    Args:
        d: the stored description.
        spec: the base model's entry (text preprocessors reload its tokenizer).
    Returns:
        A preprocessor equal in behaviour to the one that was described.
    Raises:
        ConfigError: the description is malformed or belongs to another modality.
    """
    if d.get("modality") != spec.modality:
        raise ConfigError(f"preprocessing is for {d.get('modality')!r}, {spec.name} is {spec.modality}",
                          param="preprocessing")  # fmt: skip
    if spec.modality == "text":
        return _make_text(spec, d.get("max_length"))
    fields = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    try:
        return ImagePreprocessor(**{k: d[k] for k in fields})
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"malformed image preprocessing: {exc}", param="preprocessing") from exc
