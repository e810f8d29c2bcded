"""What one dataset may make the loader hold: :class:`DataLimits` and the defaults of its fields.

The service's settings (``domain/settings.py``) write the same defaults out, to import no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_EXTRACT_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_MAX_TEXT_CHARS",
    "DataLimits",
]

#: 25 M pixels: a 6000x4000 camera photo fits; decoded as RGB it takes 75 MB. Pillow's own limit
#: (89 M pixels, 270 MB decoded) lets a 86 KB PNG cost a quarter of a gigabyte.
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
#: 100,000 characters: ten long news articles. No model here reads more than a few thousand tokens.
DEFAULT_MAX_TEXT_CHARS = 100_000
#: 8 MiB per CSV record or JSONL line: room for a base64 image of about 6 MB.
DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024
#: 1 GiB: what an archive may expand to on disk, and a Parquet file's columns in memory.
DEFAULT_MAX_EXTRACT_BYTES = 1024**3


@dataclass(frozen=True)
class DataLimits:
    """Bounds on what one dataset may make the loader hold; every field must be at least 1.

    Attributes:
        max_image_pixels: width x height of one image (after any JPEG draft scaling), read from the
            header before the pixels are decoded.
        max_text_chars: characters of one text item.
        max_record_bytes: bytes of one CSV record (which may span lines) or JSONL line, counted while
            it is read.
        max_extract_bytes: bytes an archive may expand to, counted while extracting, and the
            uncompressed size of the columns read from a Parquet file.
        image_side: when set, images are decoded toward this shorter side (never below it): JPEG's
            draft mode scales while decoding, other formats are reduced by an integer factor after.
    """

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES
    image_side: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_text_chars", "max_record_bytes", "max_extract_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.image_side is not None and self.image_side < 1:
            raise ValueError(f"image_side must be a positive integer or None, got {self.image_side!r}")
