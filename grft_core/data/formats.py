"""Readers for the on-disk dataset formats: image folders, CSV, JSONL, Parquet and ``save_to_disk`` folders.

Each reader checks every row and returns :class:`RawRecords`: texts, or *where* each image lives (a file
or its bytes), with labels already in their string form; the cell checks (labels, texts, image cells)
are here, the parsing of table files into rows is in :mod:`grft_core.data.tables`. Images are decoded
later, by :func:`~grft_core.data.images.decode_image`, and only for the rows that are kept, so that
``max_items`` stays cheap on large image sets. Every problem is a
:class:`~grft_core.errors.DatasetRejected` that names the file, column or line at fault.

What one input may make the reader hold is bounded by :class:`~grft_core.data.limits.DataLimits`
(characters per text; bytes per CSV record or JSONL line, counted while the line is read; bytes a
Parquet file's columns expand to), so memory follows those numbers, not the input.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grft_core.cancel import check_stop
from grft_core.data.images import IMAGE_SUFFIXES, ImageSource
from grft_core.data.limits import DataLimits
from grft_core.data.tables import read_rows, row_dicts, table_modality
from grft_core.errors import DatasetRejected

TABULAR_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Folders that archivers add next to the data (macOS resource forks) and that hold no examples.
_IGNORED_NAMES = frozenset({"__MACOSX"})
_INT_LABEL = re.compile(r"-?\d+")
# A relative or absolute file name ending in an image suffix, short and plain (safe to quote back).
_IMAGE_NAME = re.compile(
    r"[\w./-]{1,120}\.(" + "|".join(sorted(s[1:] for s in IMAGE_SUFFIXES)) + ")", re.IGNORECASE
)


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
    columns, body = read_rows(path, kind, limits)
    modality = table_modality(path.name, columns)
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
    modality = table_modality(path.name, list(loaded.column_names))
    feature = loaded.features["label"]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    table = loaded.with_format("arrow")[:]
    records = RawRecords(modality, path.name)
    for where, row in row_dicts(table.select([modality, "label"]).to_pydict()):
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
