"""Image files and image decoding: the suffixes an image file may have, and :func:`decode_image`, which
refuses an image from its header when it has too many pixels (before decoding it) and can decode toward
a target size (JPEG draft scaling while decoding, an integer reduction after for other formats).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image

from grft_core.data.limits import DEFAULT_MAX_IMAGE_PIXELS
from grft_core.errors import DatasetRejected

__all__ = ["IMAGE_SUFFIXES", "ImageSource", "decode_image"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

ImageSource = bytes | Path


def decode_image(
    source: ImageSource,
    what: str,
    param: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    reduce_to: int | None = None,
) -> Image.Image:
    """Decode one image into memory as RGB, refusing it from its header when it has too many pixels.

    Takes raw bytes or a local file, ``what`` (the file or row, for the message), ``param`` (for the
    error, default ``what``), ``max_pixels`` (width x height allowed, checked before decoding) and
    ``reduce_to`` (when set, decode toward this shorter side, never below it: JPEG scales while
    decoding, other formats are reduced by an integer factor). Returns the loaded RGB image. Raises
    :class:`DatasetRejected` for a corrupt or unreadable image, one over ``max_pixels``, and one over
    Pillow's own pixel limit (a decompression bomb).
    """
    param = param or what
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; an upload that large is refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            stream = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(stream) as image:
                if reduce_to is not None:
                    # JPEG only: the decoder scales by 1/2, 1/4 or 1/8 and keeps both sides >= reduce_to.
                    image.draft("RGB", (reduce_to, reduce_to))
                width, height = image.size
                if width * height > max_pixels:
                    raise DatasetRejected(
                        f"image {what} is {width}x{height} ({width * height:,} pixels), over the limit "
                        f"of {max_pixels:,} pixels per image (max_image_pixels)",
                        param=param,
                    )
                image.load()
                if image.mode == "P" and "transparency" in image.info:
                    # Going through RGBA keeps Pillow from warning about palette transparency.
                    rgb = image.convert("RGBA").convert("RGB")
                else:
                    rgb = image.convert("RGB")
            factor = min(rgb.size) // reduce_to if reduce_to else 1
            return rgb.reduce(factor) if factor >= 2 else rgb
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetRejected(f"image {what} is too large (decompression bomb): {exc}", param=param) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # The kind of failure, not Pillow's words (they can quote paths and bytes of the file).
        raise DatasetRejected(
            f"cannot read image {what}: the file is corrupt or not an image ({type(exc).__name__})",
            param=param,
        ) from exc
