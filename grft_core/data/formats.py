"""Readers for the on-disk dataset formats: image folders, CSV, JSONL, Parquet and ``save_to_disk`` folders.

Each reader checks every row and returns :class:`RawRecords`: texts, or *where* each image lives (a file
or its bytes), with labels already in their string form. Images are decoded later, by
:func:`decode_image`, and only for the rows that are kept, so that ``max_items`` stays cheap on large
image sets. Every problem is a :class:`~grft_core.errors.DatasetRejected` that names the file, column
or line at fault.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from grft_core.errors import DatasetRejected

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
TABULAR_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Folders that archivers add next to the data (macOS resource forks) and that hold no examples.
_IGNORED_NAMES = frozenset({"__MACOSX"})
_INT_LABEL = re.compile(r"-?\d+")
# Base64-encoded images easily exceed the csv module's default 128 KiB field limit.
_CSV_FIELD_LIMIT = 256 * 1024 * 1024

ImageSource = bytes | Path


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


def decode_image(source: ImageSource, what: str, param: str | None = None) -> Image.Image:
    """Decode one image fully into memory as RGB.

    Takes raw bytes or a local file, ``what`` (the file or row, for the message) and ``param`` (for the
    error, default ``what``). Returns the loaded RGB image. Raises :class:`DatasetRejected` for a
    corrupt or unreadable image and for one over Pillow's pixel limit (a decompression bomb).
    """
    param = param or what
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; an upload that large is refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            stream = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(stream) as image:
                image.load()
                if image.mode == "P" and "transparency" in image.info:
                    # Going through RGBA keeps Pillow from warning about palette transparency.
                    return image.convert("RGBA").convert("RGB")
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetRejected(f"image {what} is too large (decompression bomb): {exc}", param=param) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DatasetRejected(f"cannot read image {what}: {exc}", param=param) from exc


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


def read_table(path: Path, kind: str) -> RawRecords:
    """Read a CSV, JSONL or Parquet file (``kind``) with ``text``+``label`` or ``image``+``label`` columns.

    Returns one record per row. Raises :class:`DatasetRejected` for a missing column, an empty text or
    null label (naming its line, or row for Parquet), a bad image cell, or a file that cannot be parsed.
    """
    if kind == "csv":
        rows = _csv_rows(path)
    elif kind == "jsonl":
        rows = _jsonl_rows(path)
    else:
        rows = _parquet_rows(path)
    columns, body = rows
    modality = _modality(path.name, columns)
    records = RawRecords(modality, path.name)
    for where, row in body:
        label = label_string(row.get("label"), path.name, where)
        if modality == "text":
            records.add(_text_cell(row.get("text"), path.name, where), label, where)
        else:
            records.add(
                image_cell(row.get("image"), path.parent, f"{path.name} {where}", where), label, where
            )
    if not records.items:
        raise DatasetRejected(f"{path.name} has no rows", param=path.name)
    return records


def _text_cell(value: Any, name: str, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DatasetRejected(f"{name}: empty text on {where}", param=where)
    if not isinstance(value, str):
        raise DatasetRejected(
            f"{name}: text on {where} is a {type(value).__name__}, not a string", param=where
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
    raise DatasetRejected(f"{name}: label {value!r} on {where} is not a string or an integer", param=where)


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
    shown = text if len(text) <= 80 else text[:77] + "..."
    if Path(text).is_absolute() or ".." in Path(text).parts:
        raise DatasetRejected(f"{what}: image path {shown!r} escapes the dataset folder", param=param)
    raise DatasetRejected(
        f"{what}: image {shown!r} is neither a file next to the dataset nor base64", param=param
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
    if "label" not in columns:
        raise DatasetRejected(
            f"{name} has no `label` column (columns: {', '.join(columns) or 'none'})", param="label"
        )
    if "text" in columns and "image" in columns:
        raise DatasetRejected(f"{name} has both `text` and `image` columns; keep only one", param="image")
    if "text" in columns:
        return "text"
    if "image" in columns:
        return "image"
    raise DatasetRejected(
        f"{name} has neither a `text` nor an `image` column (columns: {', '.join(columns)})", param="text"
    )


Rows = tuple[list[str], Iterable[tuple[str, dict[str, Any]]]]


def _csv_rows(path: Path) -> Rows:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    rows: list[tuple[str, dict[str, Any]]] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = [column.strip() for column in next(reader, [])]
            if not header:
                raise DatasetRejected(f"{path.name} has no header line", param=path.name)
            _modality(path.name, header)
            previous = reader.line_num
            for row in reader:
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


def _jsonl_rows(path: Path) -> Rows:
    rows: list[tuple[str, dict[str, Any]]] = []
    columns: list[str] = []
    with path.open(encoding="utf-8-sig") as handle:
        try:
            for number, line in enumerate(handle, start=1):
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


def _parquet_rows(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        columns = list(pq.read_schema(path).names)
        modality = _modality(path.name, columns)
        table = pq.read_table(path, columns=[modality, "label"])
    except (pa.ArrowException, OSError) as exc:
        raise DatasetRejected(f"{path.name} is not a readable Parquet file: {exc}", param=path.name) from exc
    return columns, _row_dicts(table.to_pydict())


def _row_dicts(table: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    names = list(table)
    count = len(table[names[0]]) if names else 0
    return [(f"row {i + 1}", {name: table[name][i] for name in names}) for i in range(count)]


def read_saved_dataset(path: Path) -> RawRecords:
    """Read a folder written by ``datasets``' ``save_to_disk`` (a Dataset, or a DatasetDict's ``train``).

    A ``ClassLabel`` label feature supplies the class names. Returns one record per row. Raises
    :class:`DatasetRejected` when the folder cannot be loaded, has several splits and none named
    ``train``, or has bad columns or rows.
    """
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DatasetRejected(f"{path.name} is not a readable saved dataset: {exc}", param=path.name) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise DatasetRejected(
                f"{path.name} holds splits {sorted(loaded)} and none is named `train`", param=path.name
            )
    modality = _modality(path.name, list(loaded.column_names))
    feature = loaded.features["label"]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    table = loaded.with_format("arrow")[:]
    records = RawRecords(modality, path.name)
    for where, row in _row_dicts(table.select([modality, "label"]).to_pydict()):
        value = row["label"]
        if names is not None and value is not None:
            # ClassLabel stores indices; -1 is its marker for "no label".
            if not 0 <= value < len(names):
                raise DatasetRejected(f"{path.name}: null label on {where} (index {value})", param=where)
            value = names[value]
        label = label_string(value, path.name, where)
        if modality == "text":
            records.add(_text_cell(row["text"], path.name, where), label, where)
        else:
            records.add(image_cell(row["image"], path, f"{path.name} {where}", where), label, where)
    if not records.items:
        raise DatasetRejected(f"{path.name} has no rows", param=path.name)
    return records
