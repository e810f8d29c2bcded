"""Queries on uploaded files; every one starts from the tenant's own rows."""

from __future__ import annotations

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from domain.files.models import File


def _tenant_files(tenant_id: str) -> Select[File]:
    return select(File).where(File.tenant_id == tenant_id)


def get(session: Session, tenant_id: str, file_id: str) -> File | None:
    return session.scalars(_tenant_files(tenant_id).where(File.id == file_id)).first()


def page(
    session: Session, tenant_id: str, *, after: File | None, limit: int, purpose: str | None
) -> tuple[list[File], bool]:
    """Newest first; ``after`` is the last row of the previous page. Returns ``(rows, has_more)``."""
    stmt = _tenant_files(tenant_id)
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    if after is not None:
        # (created_at, id) is a total order, so rows created in the same microsecond are not skipped.
        stmt = stmt.where(
            or_(
                File.created_at < after.created_at,
                and_(File.created_at == after.created_at, File.id < after.id),
            )
        )
    rows = list(session.scalars(stmt.order_by(File.created_at.desc(), File.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def add(session: Session, row: File) -> None:
    session.add(row)
    session.flush()


def delete(session: Session, row: File) -> None:
    session.delete(row)
    session.flush()
