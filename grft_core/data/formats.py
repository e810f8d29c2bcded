"""Readers for the on-disk dataset formats: image folders, CSV, JSONL, Parquet and ``save_to_disk`` folders.

Each reader checks every row and returns :class:`RawRecords`: texts, or *where* each image lives (a file
or its bytes), with labels already in their string form. Images are decoded later, by
:func:`decode_image`, and only for the rows that are kept, so that ``max_items`` stays cheap on large
image sets. Every problem is a :class:`~grft_core.errors.DatasetRejected` that names the file, column
or line at fault.

What one input may make the reader hold is bounded by :class:`DataLimits` (pixels per image, read from
the header before decoding; characters per text; bytes per CSV record or JSONL line, counted while the
line is read; bytes an archive or Parquet file expands to), so memory follows those numbers, not the
input.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from PIL import Image

from grft_core.cancel import check_stop
from grft_core.errors import DatasetRejected

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
TABULAR_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Folders that archivers add next to the data (macOS resource forks) and that hold no examples.
_IGNORED_NAMES = frozenset({"__MACOSX"})
_INT_LABEL = re.compile(r"-?\d+")
# A relative or absolute file name ending in an image suffix, short and plain (safe to quote back).
_IMAGE_NAME = re.compile(
    r"[\w./-]{1,120}\.(" + "|".join(sorted(s[1:] for s in IMAGE_SUFFIXES)) + ")", re.IGNORECASE
)
# Base64-encoded images easily exceed the csv module's default 128 KiB field limit.
_CSV_FIELD_LIMIT = 256 * 1024 * 1024

ImageSource = bytes | Path

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


@dataclass
class RawRecords:
    """Rows read from one dataset, before images are decoded and labels become indices.

    ``where`` says where each example came from: a row ("line 3", "row 3") of the file ``name`` when
    ``by_row``, else an image's path inside the folder ``name``.
    """

    modality: Literal["image", "text"]
    name: str
    by_row: bool = True
    items: list[str | ImageSource] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)

    def add(self, item: str | ImageSource, label: str, where: str) -> None:
        self.items.append(item)
        self.labels.append(label)
        self.where.append(where)


def is_visible(path: Path) -> bool:
    """Whether ``path`` is part of the data (not a dot-file or an archiver's side folder)."""
    return not path.name.startswith(".") and path.name not in _IGNORED_NAMES


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def sort_classes(names: Iterable[str]) -> list[str]:
    """Sort class names: numerically when every name is an integer (so 10 follows 9), else as strings."""
    unique = set(names)
    if unique and all(_INT_LABEL.fullmatch(name) for name in unique):
        return sorted(unique, key=lambda name: (int(name), name))
    return sorted(unique)


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


def read_image_folder(root: Path, name: str | None = None) -> RawRecords:
    """Read a folder with one sub-folder per class (the class is the sub-folder's name).

    ``name`` is how messages call the folder (default: its own name). Files at the top level (a
    README, a licence) are ignored; sub-folders of a class folder are searched too. Returns the image
    files (not yet decoded). Raises :class:`DatasetRejected` when there are no class folders or a class
    folder holds a file that is not an image.
    """
    name = name or root.name
    records = RawRecords("image", name, by_row=False)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and is_visible(p))
    if not class_dirs:
        raise DatasetRejected(
            f"{name} has no class sub-folders: an image folder needs one sub-folder per class", param=name
        )
    for class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
            check_stop()
            relative = path.relative_to(root)
            if not path.is_file() or not all(is_visible(Path(part)) for part in relative.parts):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                expected = ", ".join(sorted(IMAGE_SUFFIXES))
                raise DatasetRejected(
                    f"{relative.as_posix()} is not an image (expected one of {expected})",
                    param=relative.as_posix(),
                )
            records.add(path, class_dir.name, relative.as_posix())
    if not records.items:
        raise DatasetRejected(f"{name} holds no images", param=name)
    return records


def read_table(path: Path, kind: str, limits: DataLimits | None = None) -> RawRecords:
    """Read a CSV, JSONL or Parquet file (``kind``) with ``text``+``label`` or ``image``+``label`` columns.

    Returns one record per row. Raises :class:`DatasetRejected` for a missing column, an empty text or
    null label (naming its line, or row for Parquet), a bad image cell, a file that cannot be parsed,
    or anything over ``limits`` (default :class:`DataLimits`): a record over ``max_record_bytes``
    (refused before more of it is read), a text over ``max_text_chars``, Parquet columns that expand
    past ``max_extract_bytes``.
    """
    limits = limits or DataLimits()
    if kind == "csv":
        rows = _csv_rows(path, limits.max_record_bytes)
    elif kind == "jsonl":
        rows = _jsonl_rows(path, limits.max_record_bytes)
    else:
        rows = _parquet_rows(path, limits.max_extract_bytes)
    columns, body = rows
    modality = _modality(path.name, columns)
    records = RawRecords(modality, path.name)
    for where, row in body:
        check_stop()
        label = label_string(row.get("label"), path.name, where)
        if modality == "text":
            text = _text_cell(row.get("text"), path.name, where, limits.max_text_chars)
            records.add(text, label, where)
        else:
            records.add(
                image_cell(row.get("image"), path.parent, f"{path.name} {where}", where), label, where
            )
    if not records.items:
        raise DatasetRejected(f"{path.name} has no rows", param=path.name)
    return records


def _text_cell(value: Any, name: str, where: str, max_chars: int) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DatasetRejected(f"{name}: empty text on {where}", param=where)
    if not isinstance(value, str):
        raise DatasetRejected(
            f"{name}: text on {where} is a {type(value).__name__}, not a string", param=where
        )
    if len(value) > max_chars:
        raise DatasetRejected(
            f"{name}: text on {where} has {len(value):,} characters, over the limit of {max_chars:,} "
            "per text (max_text_chars)",
            param=where,
        )
    return value


def label_string(value: Any, name: str, where: str) -> str:
    """Turn the label cell on ``where`` of file ``name`` into its class name.

    Integers (and integral floats) become their decimal form, strings are stripped. Raises
    :class:`DatasetRejected` (param ``where``) for a null or empty label, a boolean or any other type.
    """
    if (
        value is None
        or (isinstance(value, float) and value != value)
        or (isinstance(value, str) and not value.strip())
    ):
        raise DatasetRejected(f"{name}: null label on {where}", param=where)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise DatasetRejected(
        f"{name}: label on {where} is a {type(value).__name__}, not a string or an integer", param=where
    )


def image_cell(value: Any, folder: Path, what: str, param: str) -> ImageSource:
    """Resolve one image cell: raw bytes, a ``{"bytes", "path"}`` dict, base64 text or a relative path.

    Paths are resolved under ``folder`` and may not leave it. Returns bytes or a local file. Raises
    :class:`DatasetRejected` (param ``param``) when the cell is empty or names no readable image.
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        if len(value) == 0:
            raise DatasetRejected(f"{what}: empty image", param=param)
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise DatasetRejected(f"{what}: empty image", param=param)
    text = value.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    candidate = _file_under(folder, text)
    if candidate is not None:
        return candidate
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    # A cell is echoed only when it is shaped like an image file name (what a user needs to find the
    # missing file); anything else could be the content of a file that is no dataset at all.
    shown = f"{text!r} " if _IMAGE_NAME.fullmatch(text) else ""
    if Path(text).is_absolute() or ".." in Path(text).parts:
        raise DatasetRejected(f"{what}: image path {shown}escapes the dataset folder", param=param)
    raise DatasetRejected(
        f"{what}: image {shown}is neither a file next to the dataset nor base64", param=param
    )


def _file_under(folder: Path, text: str) -> Path | None:
    if len(text) > 4096 or "\n" in text or Path(text).is_absolute():
        return None
    try:
        candidate = (folder / text).resolve()
        inside = candidate.is_relative_to(folder.resolve())
        return candidate if inside and candidate.is_file() else None
    except (OSError, ValueError):
        return None


def _modality(name: str, columns: list[str]) -> Literal["image", "text"]:
    # The expected columns, never the ones found: a header line may be the first line of a file that is
    # no dataset at all (a secret, an internal page), and it must not come back in the message.
    if "label" not in columns:
        raise DatasetRejected(
            f"{name} has no `label` column: a table needs a `label` column and a `text` or an `image` column",
            param="label",
        )
    if "text" in columns and "image" in columns:
        raise DatasetRejected(f"{name} has both `text` and `image` columns; keep only one", param="image")
    if "text" in columns:
        return "text"
    if "image" in columns:
        return "image"
    raise DatasetRejected(
        f"{name} has neither a `text` nor an `image` column: a table needs one of them next to `label`",
        param="text",
    )


Rows = tuple[list[str], Iterable[tuple[str, dict[str, Any]]]]


class _Lines(Iterator[str]):
    """The lines of a text file, refusing a record (one line, or several for a quoted CSV field) over
    ``limit`` bytes: no line is read past ``limit + 1`` characters, so a single huge line costs at most
    that much memory before it is refused."""

    def __init__(self, handle: IO[str], limit: int, name: str) -> None:
        self.handle, self.limit, self.name = handle, limit, name
        self.number = 0  # lines read
        self.record_start = 1
        self.record_bytes = 0

    def start_record(self) -> None:
        self.record_start, self.record_bytes = self.number + 1, 0

    def __next__(self) -> str:
        line = self.handle.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.number += 1
        self.record_bytes += len(line) if line.isascii() else len(line.encode("utf-8", "surrogatepass"))
        if self.record_bytes > self.limit:
            where = f"line {self.record_start}"
            raise DatasetRejected(
                f"{self.name}: the record on {where} is over the limit of {self.limit:,} bytes per record "
                "(max_record_bytes)",
                param=where,
            )
        return line


def _csv_rows(path: Path, max_record_bytes: int) -> Rows:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    rows: list[tuple[str, dict[str, Any]]] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        lines = _Lines(handle, max_record_bytes, path.name)
        reader = csv.reader(lines)
        try:
            header = [column.strip() for column in next(reader, [])]
            if not header:
                raise DatasetRejected(f"{path.name} has no header line", param=path.name)
            _modality(path.name, header)
            previous = reader.line_num
            lines.start_record()
            for row in reader:
                check_stop()
                lines.start_record()
                # A quoted field may span lines: a row starts on the line after the previous one ended.
                where, previous = f"line {previous + 1}", reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise DatasetRejected(
                        f"{path.name}: {where} has {len(row)} fields, the header has {len(header)}",
                        param=where,
                    )
                rows.append((where, dict(zip(header, row, strict=True))))
        except UnicodeDecodeError as exc:
            raise DatasetRejected(
                f"{path.name} is not UTF-8 text (near line {reader.line_num + 1})", param=path.name
            ) from exc
        except csv.Error as exc:
            where = f"line {reader.line_num}"
            raise DatasetRejected(f"{path.name}: malformed CSV on {where}: {exc}", param=where) from exc
    return header, rows


def _jsonl_rows(path: Path, max_record_bytes: int) -> Rows:
    rows: list[tuple[str, dict[str, Any]]] = []
    columns: list[str] = []
    with path.open(encoding="utf-8-sig") as handle:
        lines = _Lines(handle, max_record_bytes, path.name)
        try:
            for number, line in enumerate(lines, start=1):
                check_stop()
                lines.start_record()
                if not line.strip():
                    continue
                where = f"line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetRejected(
                        f"{path.name}: {where} is not valid JSON ({exc.msg})", param=where
                    ) from exc
                if not isinstance(row, dict):
                    raise DatasetRejected(f"{path.name}: {where} is not a JSON object", param=where)
                if not columns:
                    columns = list(row)
                    _modality(path.name, columns)
                rows.append((where, row))
        except UnicodeDecodeError as exc:
            raise DatasetRejected(f"{path.name} is not UTF-8 text", param=path.name) from exc
    return columns, rows


def _parquet_rows(path: Path, max_bytes: int) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        columns = list(metadata.schema.to_arrow_schema().names)
        modality = _modality(path.name, columns)
        _check_parquet_size(path.name, metadata, {modality, "label"}, max_bytes)
        table = pq.read_table(path, columns=[modality, "label"])
    except (pa.ArrowException, OSError) as exc:
        raise DatasetRejected(
            f"{path.name} is not a readable Parquet file ({type(exc).__name__})", param=path.name
        ) from exc
    return columns, _row_dicts(table.to_pydict())


def _check_parquet_size(name: str, metadata: Any, wanted: set[str], max_bytes: int) -> None:
    """Refuse a Parquet file whose columns ``wanted`` expand past ``max_bytes``, from its footer alone:
    compressed pages of repeated values read back many times larger."""
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if chunk.path_in_schema.split(".")[0] in wanted:
                total += int(chunk.total_uncompressed_size or 0)
    if total > max_bytes:
        raise DatasetRejected(
            f"{name} expands to {total:,} bytes, over the limit of {max_bytes:,} bytes (max_extract_bytes)",
            param=name,
        )


def _row_dicts(table: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    names = list(table)
    count = len(table[names[0]]) if names else 0
    return [(f"row {i + 1}", {name: table[name][i] for name in names}) for i in range(count)]


def read_saved_dataset(path: Path, limits: DataLimits | None = None) -> RawRecords:
    """Read a folder written by ``datasets``' ``save_to_disk`` (a Dataset, or a DatasetDict's ``train``).

    A ``ClassLabel`` label feature supplies the class names. Returns one record per row. Raises
    :class:`DatasetRejected` when the folder cannot be loaded, has several splits and none named
    ``train``, or has bad columns or rows (a text over ``limits.max_text_chars`` among them).
    """
    import datasets

    limits = limits or DataLimits()
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DatasetRejected(
            f"{path.name} is not a readable saved dataset ({type(exc).__name__})", param=path.name
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise DatasetRejected(
                f"{path.name} holds {len(loaded)} splits and none is named `train`", param=path.name
            )
    modality = _modality(path.name, list(loaded.column_names))
    feature = loaded.features["label"]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    table = loaded.with_format("arrow")[:]
    records = RawRecords(modality, path.name)
    for where, row in _row_dicts(table.select([modality, "label"]).to_pydict()):
        check_stop()
        value = row["label"]
        if names is not None and value is not None:
            # ClassLabel stores indices; -1 is its marker for "no label".
            if not 0 <= value < len(names):
                raise DatasetRejected(f"{path.name}: null label on {where} (index {value})", param=where)
            value = names[value]
        label = label_string(value, path.name, where)
        if modality == "text":
            records.add(_text_cell(row["text"], path.name, where, limits.max_text_chars), label, where)
        else:
            records.add(image_cell(row["image"], path, f"{path.name} {where}", where), label, where)
    if not records.items:
        raise DatasetRejected(f"{path.name} has no rows", param=path.name)
    return records
