"""Queries on uploaded files; every one starts from the tenant's own rows."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from domain.files.models import File
from domain.pagination import keyset_page


def _tenant_files(tenant_id: str) -> Select[File]:
    return select(File).where(File.tenant_id == tenant_id)


def get(session: Session, tenant_id: str, file_id: str) -> File | None:
    return session.scalars(_tenant_files(tenant_id).where(File.id == file_id)).first()


def page(
    session: Session, tenant_id: str, *, after: File | None, limit: int, purpose: str | None
) -> tuple[list[File], bool]:
    """Newest first; ``after`` is the last row of the previous page. Returns ``(rows, has_more)``
    (``domain.pagination``'s contract)."""
    stmt = _tenant_files(tenant_id)
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    return keyset_page(session, stmt, (File.created_at, File.id), after, limit)


def add(session: Session, row: File) -> None:
    session.add(row)
    session.flush()


def delete(session: Session, row: File) -> None:
    session.delete(row)
    session.flush()
