"""``keyset_page``: one ``has_more`` contract (at least one more row follows this page) for every list,
and no row skipped or repeated when rows share the leading sort key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from domain.pagination import keyset_page


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    created: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String)


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        # Ten rows, created in pairs at the same instant: the id breaks the ties.
        s.add_all(Row(id=f"r{i}", created=i // 2, kind="a" if i % 3 else "b") for i in range(10))
        s.commit()
        yield s
    engine.dispose()


ORDER = (Row.created, Row.id)


def walk(session: Session, limit: int, descending: bool = True) -> list[tuple[list[str], bool]]:
    pages, after = [], None
    while True:
        rows, has_more = keyset_page(session, select(Row), ORDER, after, limit, descending=descending)
        pages.append(([r.id for r in rows], has_more))
        if not has_more:
            return pages
        after = rows[-1]


class TestKeysetPage:
    @pytest.mark.parametrize("limit", [1, 3, 4, 5, 9, 10, 11])
    def test_walks_every_row_once_newest_first(self, session: Session, limit: int) -> None:
        pages = walk(session, limit)
        ids = [i for page, _ in pages for i in page]
        assert ids == [f"r{i}" for i in range(9, -1, -1)]
        # has_more is true exactly when another row follows: never an empty last page.
        assert [more for _, more in pages] == [True] * (len(pages) - 1) + [False]
        assert all(page for page, _ in pages)

    def test_exact_multiple_has_no_trailing_empty_page(self, session: Session) -> None:
        first, second = ["r9", "r8", "r7", "r6", "r5"], ["r4", "r3", "r2", "r1", "r0"]
        assert walk(session, 5) == [(first, True), (second, False)]

    def test_ascending(self, session: Session) -> None:
        pages = walk(session, 4, descending=False)
        assert [i for page, _ in pages for i in page] == [f"r{i}" for i in range(10)]

    def test_cursor_as_values_and_filters_kept(self, session: Session) -> None:
        stmt = select(Row).where(Row.kind == "a")
        rows, has_more = keyset_page(session, stmt, ORDER, (3, "r7"), 2)
        assert [r.id for r in rows] == ["r5", "r4"]
        assert has_more  # r2 and r1 follow
        rows, has_more = keyset_page(session, stmt, ORDER, rows[-1], 2)
        assert ([r.id for r in rows], has_more) == (["r2", "r1"], False)

    def test_bad_arguments(self, session: Session) -> None:
        with pytest.raises(ValueError, match="limit"):
            keyset_page(session, select(Row), ORDER, None, 0)
        with pytest.raises(ValueError, match="cursor"):
            keyset_page(session, select(Row), ORDER, (1,), 2)
