"""Small builders shared by the dataset-loading tests: real image bytes, class folders, CSV and JSON-lines
files, and a shortcut that loads a URI expecting a DatasetRejected."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from grft_core.data.loading import load_dataset
from grft_core.errors import DatasetRejected

COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "eel": (0, 255, 0)}


def png_bytes(color: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i:02d}.png").write_bytes(png_bytes(COLORS.get(name, (9, 9, 9))))
    return root


def write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rejected(uri: str, **kwargs: object) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as info:
        load_dataset(uri, **kwargs)  # type: ignore[arg-type]
    return info.value


TEXT_ROWS = [["good film", "pos"], ["bad film", "neg"], ["great", "pos"], ["awful", "neg"]]
