"""The file objects the API returns, in OpenAI's shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from api.pagination import CursorPage
from domain.files.models import File

PURPOSES = ("fine-tune",)


def unix(moment: datetime) -> int:
    """Seconds since the epoch; SQLite hands back naive datetimes, which are UTC here."""
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"

    @classmethod
    def of(cls, row: File) -> FileObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=unix(row.created_at),
            filename=row.filename,
            purpose=row.purpose,
        )


class FileList(CursorPage[FileObject]):
    @classmethod
    def of_rows(cls, rows: list[File], has_more: bool) -> FileList:
        return cls.of([FileObject.of(r) for r in rows], has_more)


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
