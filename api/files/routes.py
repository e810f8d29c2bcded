"""``/v1/files``: upload, list, retrieve, delete and download datasets (OpenAI's Files API shapes).

Uploads are parsed as they arrive and their bytes go straight to the artifact store, so the size cap
holds while the body is still coming in: nothing is spooled whole to a temporary file first, as
Starlette's form parser would do.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import AsyncIterator, Iterator
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio.from_thread
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from api.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, Unauthorized, error_responses
from api.files import service
from api.files.schemas import PURPOSES, FileDeleted, FileList, FileObject

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/files", tags=["files"])

# Room for the multipart framing and the small fields around the file's bytes.
MULTIPART_SLACK = 64 * 1024
MAX_FIELD_BYTES = 1024
FileId = Annotated[str, Path(max_length=64)]

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(PURPOSES)},
                    },
                }
            }
        },
    }
}


class MultipartUpload:
    """A ``multipart/form-data`` body read chunk by chunk from a request, inside a worker thread.

    ``chunks()`` yields the bytes of the part named ``file`` as they arrive; the other fields (only
    ``purpose`` is used) are small and kept. ``filename`` and ``purpose`` are final once it ends.
    """

    def __init__(self, request: Request) -> None:
        _, options = parse_options_header(request.headers.get("content-type"))
        boundary = options.get(b"boundary")
        if (
            not request.headers.get("content-type", "").lower().startswith("multipart/form-data")
            or not boundary
        ):
            raise BadRequest("send the upload as multipart/form-data with a 'file' part", param="file")
        self._stream: AsyncIterator[bytes] = request.stream().__aiter__()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )
        self.filename = ""
        self.purpose = ""
        self._fields: dict[str, str] = {}
        self._has_file = False
        self._pending: list[bytes] = []
        self._header_name = self._header_value_buf = self._disposition = b""
        self._name: str | None = None
        self._in_file = False
        self._field = bytearray()
        self._complete = False  # the closing boundary was read

    # -- parser callbacks ----------------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._disposition = b""
        self._field = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value_buf += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value_buf
        self._header_name = self._header_value_buf = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._in_file = b"filename" in options
        if not self._in_file:
            return
        if self._name != "file" or self._has_file:
            raise BadRequest("send exactly one file, in the part named 'file'", param="file")
        self._has_file = True
        self.filename = _safe_filename(options[b"filename"].decode("utf-8", "replace"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pending.append(data[start:end])
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise BadRequest(f"form field {self._name!r} is too long", param=self._name)

    def _part_end(self) -> None:
        if self._in_file or not self._name:
            return
        self._fields[self._name] = self._field.decode("utf-8", "replace")
        if self._name == "purpose":
            self._check_purpose()

    def _end(self) -> None:
        self._complete = True

    def _check_purpose(self) -> None:
        self.purpose = self._fields.get("purpose", "")
        if self.purpose not in PURPOSES:
            allowed = ", ".join(repr(p) for p in PURPOSES)
            raise BadRequest(f"purpose must be one of {allowed} (got {self.purpose!r})", param="purpose")

    # -- the file's bytes ----------------------------------------------------------------------------

    async def _next(self) -> bytes:
        return await self._stream.__anext__()

    def _body(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = anyio.from_thread.run(self._next)
            except StopAsyncIteration:
                return
            if chunk:
                yield chunk

    def chunks(self) -> Iterator[bytes]:
        try:
            for chunk in self._body():
                self._parser.write(chunk)
                yield from self._pending
                self._pending.clear()
            self._parser.finalize()
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart body: {exc}", param="file") from exc
        yield from self._pending
        self._pending.clear()
        # Raised before the generator ends, so the store discards what it received.
        if not self._complete:
            # A body cut short (a dropped connection, a client that gave up) is not a whole file.
            raise BadRequest("the multipart body ended before its closing boundary", param="file")
        if not self._has_file:
            raise BadRequest("the form has no 'file' part", param="file")
        self._check_purpose()


def _safe_filename(name: str) -> str:
    """The base name only, without control characters, at most 255 characters."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    return cleaned[:255] or "upload"


@router.post(
    "",
    responses=error_responses(Unauthorized, BadRequest, PayloadTooLarge),
    openapi_extra=_UPLOAD_BODY,
)
def create_file(
    request: Request, session: SessionDep, tenant: TenantDep, settings: SettingsDep, store: StoreDep
) -> FileObject:
    # Sync on purpose: the body is pulled from the event loop while the store writes in this thread.
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_upload_bytes + MULTIPART_SLACK:
        raise PayloadTooLarge(f"upload exceeds the {settings.max_upload_bytes:,}-byte limit", param="file")
    row = service.create(session, tenant.id, store, MultipartUpload(request), settings.max_upload_bytes)
    try:
        session.commit()
    except BaseException:
        store.delete(service.file_key(row.tenant_id, row.id))
        raise
    return FileObject.of(row)


@router.get("", responses=error_responses(Unauthorized, NotFound))
def list_files(
    session: SessionDep,
    tenant: TenantDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    purpose: Literal["fine-tune"] | None = None,
) -> FileList:
    rows, has_more = service.page(session, tenant.id, after=after, limit=limit, purpose=purpose)
    return FileList.of_rows(rows, has_more)


@router.get("/{file_id}", responses=error_responses(Unauthorized, NotFound))
def retrieve_file(file_id: FileId, session: SessionDep, tenant: TenantDep) -> FileObject:
    return FileObject.of(service.get(session, tenant.id, file_id))


@router.delete("/{file_id}", responses=error_responses(Unauthorized, NotFound, Conflict))
def delete_file(file_id: FileId, session: SessionDep, tenant: TenantDep, store: StoreDep) -> FileDeleted:
    key = service.delete(session, tenant.id, file_id)
    session.commit()
    # After the commit: a failed commit must not leave a row whose bytes are gone.
    try:
        store.delete(key)
    except OSError:
        log.exception("file %s deleted, but its bytes at %s could not be removed", file_id, key)
    return FileDeleted(id=file_id)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses=error_responses(Unauthorized, NotFound),
)
def file_content(
    file_id: FileId, session: SessionDep, tenant: TenantDep, store: StoreDep
) -> StreamingResponse:
    row = service.get(session, tenant.id, file_id)
    key = service.file_key(row.tenant_id, row.id)
    if not store.exists(key):
        raise NotFound(f"the content of file {file_id!r} is missing", param="file_id")
    headers = {
        "Content-Length": str(row.bytes),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row.filename)}",
    }
    return StreamingResponse(store.iter_bytes(key), media_type="application/octet-stream", headers=headers)
