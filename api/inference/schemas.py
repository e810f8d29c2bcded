"""Prediction request and answer shapes, and the decoding of request inputs into model inputs.

The JSON body is bounded twice: statically here (at most 4,096 inputs, the ceiling of
``predict_max_items``) and per deployment by the route, which checks the item count against
``settings.predict_max_items`` and every input's size against ``settings.predict_max_input_bytes``.
Decoding is bounded too: an image's pixels are checked from its header (``max_image_pixels``) and it is
decoded toward the size the model needs; a text is refused over ``max_text_chars`` characters (and the
preprocessor cuts it to what ``max_length`` tokens use before tokenizing).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.errors import PayloadTooLarge
from domain.jobs.model_ids import MAX_MODEL_ID
from domain.settings import Settings
from grft_core.data.images import decode_image
from grft_core.data.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_TEXT_CHARS
from grft_core.errors import DatasetRejected, GrftError

MAX_ITEMS_CEILING = 4096
TOP_K = 5
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)


class PredictInput(BaseModel):
    """One input: a base64-encoded image (PNG, JPEG, ...; a ``data:`` URL works too) or a text."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(default=None, min_length=1, description="Base64 of the image file's bytes.")
    text: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> PredictInput:
        if (self.image is None) == (self.text is None):
            raise ValueError("give exactly one of 'image' or 'text'")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[PredictInput] = Field(min_length=1, max_length=MAX_ITEMS_CEILING)


class PredictionItem(BaseModel):
    """One item of a batched call: the adapter to use and its input."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(
        min_length=1,
        max_length=MAX_MODEL_ID,
        description="An adapter id of this organization, or a fine-tuned model or checkpoint id (ft:…).",
    )
    input: PredictInput


class PredictionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[PredictionItem] = Field(min_length=1, max_length=MAX_ITEMS_CEILING)


class LabelScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    score: float = Field(ge=0.0, le=1.0)


class Prediction(BaseModel):
    """The most likely label, its probability, and the ``TOP_K`` most likely labels, best first."""

    model_config = ConfigDict(extra="forbid")

    label: str
    score: float = Field(ge=0.0, le=1.0)
    top_k: list[LabelScore] = Field(max_length=TOP_K)


class PredictionList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"] = "list"
    data: list[Prediction]


# --- decoding ----------------------------------------------------------------------------------------


class InvalidInput(GrftError):
    """An input that cannot be predicted on (encoding, image data, or the wrong modality)."""

    status_code = 422
    code = "invalid_input"


@dataclass(frozen=True)
class RawInput:
    """One undecoded input: base64 text or raw bytes for an image, or a string; ``param`` names it."""

    kind: Literal["image", "text"]
    data: str | bytes
    param: str


def image_side(preprocessor: Any) -> int | None:
    """The shorter side an image needs for ``preprocessor`` (what it resizes to before its center
    crop), or None for a preprocessor without an image size."""
    size = getattr(preprocessor, "input_size", None)
    if not size:
        return None
    crop = float(getattr(preprocessor, "crop_pct", 1.0)) or 1.0
    longest = int(max(size[1:]))
    return max(longest, math.ceil(longest / crop))


def decode_for(item: RawInput, modality: str, preprocessor: Any, settings: Settings, adapter_id: str) -> Any:
    """One input decoded within ``settings``' bounds, an image toward the size ``preprocessor`` needs."""
    return decode_inputs(
        [item],
        modality,
        settings.predict_max_input_bytes,
        adapter_id,
        max_pixels=settings.max_image_pixels,
        max_chars=settings.max_text_chars,
        side=image_side(preprocessor),
    )[0]


def decode_inputs(
    raw: Sequence[RawInput],
    modality: str,
    max_bytes: int,
    adapter_id: str,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_chars: int = DEFAULT_MAX_TEXT_CHARS,
    side: int | None = None,
) -> list[Any]:
    """PIL images or strings, in order; images decoded toward ``side`` (their shorter side) when set.

    Raises:
        InvalidInput: wrong modality, bad base64, an image Pillow cannot decode, or one over
            ``max_pixels`` (read from its header, before decoding) or Pillow's own bomb limit.
        PayloadTooLarge: an input over ``max_bytes``, a text over ``max_chars`` characters.
    """
    for item in raw:
        if item.kind != modality:
            raise InvalidInput(
                f"{item.param}: adapter {adapter_id} takes {modality} inputs, not {item.kind}",
                param=item.param,
            )
    return [
        _decode_image(item, max_bytes, max_pixels, side)
        if item.kind == "image"
        else _text(item, max_bytes, max_chars)
        for item in raw
    ]


def _too_large(param: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{param}: over the {max_bytes:,}-byte limit per input", param=param)


def _text(item: RawInput, max_bytes: int, max_chars: int) -> str:
    text = item.data if isinstance(item.data, str) else item.data.decode("utf-8", "replace")
    if len(text.encode("utf-8")) > max_bytes:
        raise _too_large(item.param, max_bytes)
    if len(text) > max_chars:
        raise PayloadTooLarge(
            f"{item.param}: {len(text):,} characters, over the {max_chars:,}-character limit per text "
            "(GRFT_MAX_TEXT_CHARS)",
            param=item.param,
        )
    return text


def _decode_image(item: RawInput, max_bytes: int, max_pixels: int, side: int | None) -> Image.Image:
    data = item.data
    if isinstance(data, str):
        encoded = _DATA_URL.sub("", data, count=1)
        # Refuse before decoding: base64 carries 3 bytes per 4 characters.
        if len(encoded) > (max_bytes + 2) // 3 * 4 + 4:
            raise _too_large(item.param, max_bytes)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"{item.param}: not valid base64 ({exc})", param=item.param) from exc
    if len(data) > max_bytes:
        raise _too_large(item.param, max_bytes)
    try:
        # The loader training uses: decompression-bomb warnings are errors, result is RGB.
        return decode_image(data, item.param, item.param, max_pixels=max_pixels, reduce_to=side)
    except DatasetRejected as exc:
        raise InvalidInput(exc.message, param=item.param) from exc
