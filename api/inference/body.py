"""Reading prediction request bodies: capped before they are parsed, errors naming the input at fault.

A body is bounded by ``predict_max_items`` inputs of at most ``predict_max_input_bytes`` each, plus
base64 and framing overhead, so an oversized request is refused without being held whole.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api.deps import SettingsDep
from api.errors import BadRequest, PayloadTooLarge
from api.inference.schemas import (
    MAX_ITEMS_CEILING,
    InvalidInput,
    PredictInput,
    PredictionsRequest,
    PredictRequest,
    RawInput,
)
from domain.settings import Settings

FRAMING_BYTES = 1024  # per input: JSON keys and quotes, or a multipart part's headers
MAX_FORM_FIELDS = 16


def body_limit(settings: Settings) -> int:
    """The largest body a request with the most, largest inputs (base64: 4 characters per 3 bytes) needs."""
    # Framing covers a batched item's adapter id too (at most 64 characters).
    per_input = (settings.predict_max_input_bytes + 2) // 3 * 4 + FRAMING_BYTES
    return settings.predict_max_items * per_input + 64 * 1024


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body over the {limit:,}-byte limit", param="body")
        yield chunk


def _param(loc: tuple[int | str, ...]) -> str | None:
    """``("inputs", 1, "image")`` → ``inputs[1].image``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


Body = TypeVar("Body", bound=BaseModel)


async def parse_json(request: Request, limit: int, model: type[Body]) -> Body:
    """The capped JSON body validated as ``model``.

    Raises:
        PayloadTooLarge: a body over ``limit`` bytes.
        InvalidInput: a body that does not validate (the message names the field at fault).
    """
    body = b"".join([chunk async for chunk in _capped(request, limit)])
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(tuple(first["loc"]))
        message = f"{param}: {first['msg']}" if param else f"invalid request body: {first['msg']}"
        raise InvalidInput(message, param=param) from exc


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse a body whose Content-Length is over ``limit`` before reading any of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body over the {limit:,}-byte limit", param="body")


async def read_predictions(request: Request, settings: SettingsDep) -> PredictionsRequest:
    """The batched predictions body: ``{"items": [{"adapter", "input"}, ...]}``, capped and validated."""
    limit = body_limit(settings)
    check_declared_length(request, limit)
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BadRequest("send application/json", param="Content-Type")
    return await parse_json(request, limit, PredictionsRequest)


async def read_inputs(request: Request, settings: SettingsDep) -> list[RawInput]:
    """The request's inputs, undecoded, each named for error messages (``inputs[i].image``, ``files[i]``).

    Raises:
        PayloadTooLarge: a body over ``body_limit``.
        InvalidInput: a body that does not validate (the message names the input at fault).
        BadRequest: a content type other than JSON or multipart.
    """
    limit = body_limit(settings)
    check_declared_length(request, limit)
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_files(request, settings, limit)
    if content_type != "application/json":
        raise BadRequest("send application/json or multipart/form-data", param="Content-Type")
    parsed = await parse_json(request, limit, PredictRequest)
    return [
        RawInput("image", item.image, f"inputs[{i}].image")
        if item.image is not None
        else RawInput("text", item.text or "", f"inputs[{i}].text")
        for i, item in enumerate(parsed.inputs)
    ]


async def _read_files(request: Request, settings: Settings, limit: int) -> list[RawInput]:
    # One file over the limit is allowed through the parser so the count error is ours (422, naming
    # the limit) rather than the parser's generic one.
    parser = MultiPartParser(
        request.headers,
        _capped(request, limit),
        max_files=settings.predict_max_items + 1,
        max_fields=MAX_FORM_FIELDS,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(f"files: {exc.message}", param="files") from exc
    try:
        unexpected = sorted({key for key, _ in form.multi_items()} - {"files"})
        if unexpected:
            raise InvalidInput(
                f"{unexpected[0]}: unexpected form field; send images as 'files'", param=unexpected[0]
            )
        uploads = form.getlist("files")
        if not uploads:
            raise InvalidInput("files: send at least one image file", param="files")
        raw = []
        for i, upload in enumerate(uploads):
            if not isinstance(upload, UploadFile):
                raise InvalidInput(f"files[{i}]: expected a file, got a text field", param=f"files[{i}]")
            raw.append(RawInput("image", await upload.read(), f"files[{i}]"))
        return raw
    finally:
        await form.close()


def request_body_doc() -> dict[str, Any]:
    """The two accepted bodies, for the OpenAPI document (the route reads the body itself)."""
    json_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_ITEMS_CEILING,
                "items": PredictInput.model_json_schema(),
            }
        },
    }
    files_schema = {
        "type": "object",
        "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": files_schema},
            },
        }
    }
