"""Keyset (cursor) pagination, the one way every list in the service pages.

A page is the first ``limit`` rows of a statement, ordered by columns that together are unique (the
last one is the row's id, so rows created in the same microsecond still have a total order), strictly
after the cursor row. ``has_more`` means exactly: at least one more row follows this page. It is found
by reading one row past the page, never by a ``COUNT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, false, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")

__all__ = ["keyset_page"]


def _after(
    columns: Sequence[InstrumentedAttribute[Any]], values: Sequence[Any], descending: bool
) -> ColumnElement[bool]:
    # (c1, c2, ..., cn) strictly past (v1, v2, ..., vn) in the page order, spelled out column by column
    # (row-value comparison is not portable across the databases the service runs on).
    clauses: list[ColumnElement[bool]] = []
    for i, column in enumerate(columns):
        equal = [columns[j] == values[j] for j in range(i)]
        past = column < values[i] if descending else column > values[i]
        clauses.append(and_(*equal, past))
    return or_(false(), *clauses)


def keyset_page(
    session: Session,
    stmt: Select[T],
    order_columns: Sequence[InstrumentedAttribute[Any]],
    after_row: object | tuple[Any, ...] | None,
    limit: int,
    *,
    descending: bool = True,
) -> tuple[list[T], bool]:
    """The rows of ``stmt`` after ``after_row`` in ``order_columns`` order, and whether more follow.

    ``after_row`` is the last row of the previous page (its ``order_columns`` attributes are read) or
    the tuple of those values, or None for the first page. ``order_columns`` must identify a row
    uniquely; newest first (``descending``) is the service's default order.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if after_row is not None:
        if isinstance(after_row, tuple):
            values: Sequence[Any] = after_row
        else:
            values = [getattr(after_row, column.key) for column in order_columns]
        if len(values) != len(order_columns):
            raise ValueError(f"a cursor of {len(values)} values for {len(order_columns)} order columns")
        stmt = stmt.where(_after(order_columns, values, descending))
    order = [column.desc() if descending else column.asc() for column in order_columns]
    # One row past the page answers has_more without a COUNT.
    rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
