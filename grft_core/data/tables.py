"""Rows of the table files: CSV, JSONL and Parquet parsed into their column names and one
``(where, row)`` pair per row, with the table's modality told by its columns.

What one record may cost is bounded while it is read: a CSV record or JSONL line past
``max_record_bytes`` is refused before more of it is read, and Parquet columns that would expand past
``max_extract_bytes`` are refused from the file's footer. Cells are checked by the readers in
:mod:`grft_core.data.formats`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from grft_core.cancel import check_stop
from grft_core.data.limits import DataLimits
from grft_core.errors import DatasetRejected

__all__ = ["Rows", "read_rows", "row_dicts", "table_modality"]

# Base64-encoded images easily exceed the csv module's default 128 KiB field limit.
_CSV_FIELD_LIMIT = 256 * 1024 * 1024


Rows = tuple[list[str], Iterable[tuple[str, dict[str, Any]]]]


def read_rows(path: Path, kind: str, limits: DataLimits) -> Rows:
    """Parse the CSV, JSONL or Parquet file (``kind``) at ``path`` into its columns and rows.

    Raises :class:`DatasetRejected` for a file that cannot be parsed, columns that hold no dataset
    (see :func:`table_modality`), or a record or Parquet file over ``limits``.
    """
    if kind == "csv":
        return _csv_rows(path, limits.max_record_bytes)
    if kind == "jsonl":
        return _jsonl_rows(path, limits.max_record_bytes)
    return _parquet_rows(path, limits.max_extract_bytes)


def table_modality(name: str, columns: list[str]) -> Literal["image", "text"]:
    """The modality a table with ``columns`` holds: ``label`` and exactly one of ``text`` or ``image``.

    Raises :class:`DatasetRejected` naming the file ``name`` and the expected columns (never the found
    ones) otherwise.
    """
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
            table_modality(path.name, header)
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
                    table_modality(path.name, columns)
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
        modality = table_modality(path.name, columns)
        _check_parquet_size(path.name, metadata, {modality, "label"}, max_bytes)
        table = pq.read_table(path, columns=[modality, "label"])
    except (pa.ArrowException, OSError) as exc:
        raise DatasetRejected(
            f"{path.name} is not a readable Parquet file ({type(exc).__name__})", param=path.name
        ) from exc
    return columns, row_dicts(table.to_pydict())


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


def row_dicts(table: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """One ``("row N", {column: value})`` pair per row of a column-wise ``table`` (N counts from 1)."""
    names = list(table)
    count = len(table[names[0]]) if names else 0
    return [(f"row {i + 1}", {name: table[name][i] for name in names}) for i in range(count)]
