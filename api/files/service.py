"""Uploaded datasets: stored whole in the artifact store, described by a row. Services never commit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from sqlalchemy.orm import Session

from api.errors import Conflict, NotFound
from domain.artifacts import ArtifactStore
from domain.files import repository
from domain.files.models import File
from domain.ids import new_id
from domain.jobs import repository as jobs_repository


class Upload(Protocol):
    """An upload read while it is stored: ``filename`` and ``purpose`` are known once ``chunks`` ends."""

    filename: str
    purpose: str

    def chunks(self) -> Iterator[bytes]: ...


def file_key(tenant_id: str, file_id: str) -> str:
    return f"files/{tenant_id}/{file_id}"


def create(session: Session, tenant_id: str, store: ArtifactStore, upload: Upload, max_bytes: int) -> File:
    """Store the upload (whole or absent) and add its row; the blob is removed if the row cannot be.

    Raises:
        PayloadTooLarge: the upload is over ``max_bytes``; nothing is left behind.
    """
    file_id = new_id("file")
    key = file_key(tenant_id, file_id)
    size, digest = store.put_stream(key, upload.chunks(), max_bytes)
    row = File(
        id=file_id,
        tenant_id=tenant_id,
        filename=upload.filename,
        purpose=upload.purpose,
        bytes=size,
        sha256=digest,
        uri=store.uri(key),
    )
    try:
        repository.add(session, row)
    except BaseException:
        store.delete(key)
        raise
    return row


def get(session: Session, tenant_id: str, file_id: str) -> File:
    row = repository.get(session, tenant_id, file_id)
    if row is None:
        raise NotFound(f"no file {file_id!r}", param="file_id")
    return row


def page(
    session: Session, tenant_id: str, *, after: str | None, limit: int, purpose: str | None
) -> tuple[list[File], bool]:
    cursor = None
    if after is not None:
        cursor = repository.get(session, tenant_id, after)
        if cursor is None:
            raise NotFound(f"no file {after!r} to page after", param="after")
    return repository.page(session, tenant_id, after=cursor, limit=limit, purpose=purpose)


def delete(session: Session, tenant_id: str, file_id: str) -> str:
    """Delete the row; returns the artifact key, to remove once the deletion is committed.

    Raises:
        NotFound: no such file for this tenant.
        Conflict: a job that has not finished still reads the file.
    """
    row = get(session, tenant_id, file_id)
    if jobs_repository.active_job_reading(session, tenant_id, file_id) is not None:
        raise Conflict(f"file {file_id!r} is used by a job that has not finished", param="file_id")
    repository.delete(session, row)
    return file_key(tenant_id, file_id)
