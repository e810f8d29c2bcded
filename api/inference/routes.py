"""``POST /v1/adapters/{id}/predict``: a JSON list of base64 images or texts, or multipart image files.

The body is read here, capped before it is parsed (``predict_max_items`` inputs of at most
``predict_max_input_bytes`` each, plus base64 and framing overhead), so an oversized request is refused
without being held whole. The endpoint itself is synchronous: decoding and the forward pass run in the
thread pool, off the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api.adapters.service import get_adapter
from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import BadRequest, NotFound, PayloadTooLarge, Unauthorized, error_responses
from api.inference.schemas import (
    MAX_ITEMS_CEILING,
    InvalidInput,
    LabelScore,
    PredictInput,
    Prediction,
    PredictionList,
    PredictRequest,
    RawInput,
    decode_inputs,
)
from api.inference.service import AdapterRef, InferenceService, service_for
from api.settings import Settings
from grft_core.errors import AdapterError, FingerprintMismatch, ModelNotFound

router = APIRouter(tags=["inference"])

FRAMING_BYTES = 1024  # per input: JSON keys and quotes, or a multipart part's headers
MAX_FORM_FIELDS = 16


def get_inference(request: Request, settings: SettingsDep) -> InferenceService:
    return service_for(request.app.state, settings)


InferenceDep = Annotated[InferenceService, Depends(get_inference)]


def body_limit(settings: Settings) -> int:
    """The largest body a request with the most, largest inputs (base64: 4 characters per 3 bytes) needs."""
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


async def read_inputs(request: Request, settings: SettingsDep) -> list[RawInput]:
    """The request's inputs, undecoded, each named for error messages (``inputs[i].image``, ``files[i]``).

    Raises:
        PayloadTooLarge: a body over ``body_limit``.
        InvalidInput: a body that does not validate (the message names the input at fault).
        BadRequest: a content type other than JSON or multipart.
    """
    limit = body_limit(settings)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body over the {limit:,}-byte limit", param="body")
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_files(request, settings, limit)
    if content_type != "application/json":
        raise BadRequest("send application/json or multipart/form-data", param="Content-Type")
    body = b"".join([chunk async for chunk in _capped(request, limit)])
    try:
        parsed = PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(tuple(first["loc"]))
        message = f"{param}: {first['msg']}" if param else f"invalid request body: {first['msg']}"
        raise InvalidInput(message, param=param) from exc
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


def _request_body_doc() -> dict[str, Any]:
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


@router.post(
    "/v1/adapters/{adapter_id}/predict",
    response_model=PredictionList,
    openapi_extra=_request_body_doc(),
    responses=error_responses(
        Unauthorized, NotFound, InvalidInput, PayloadTooLarge, BadRequest, FingerprintMismatch, ModelNotFound
    )
    | {AdapterError.status_code: {"description": "invalid input, or an adapter that cannot be served"}},
)
def predict(
    adapter_id: Annotated[str, Path(min_length=1, max_length=64)],
    # Authentication resolves before the body is read: an anonymous caller is refused without upload.
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    inference: InferenceDep,
    raw: Annotated[list[RawInput], Depends(read_inputs)],
) -> PredictionList:
    """One prediction per input, in input order: the label, its probability and the top 5."""
    ref = AdapterRef.from_row(get_adapter(session, tenant, adapter_id), inference.store)
    # End the read-only unit of work now, so no pooled database connection waits on the model.
    session.commit()
    if len(raw) > settings.predict_max_items:
        message = f"inputs: at most {settings.predict_max_items} inputs per request, got {len(raw)}"
        raise InvalidInput(message, param="inputs")
    adapter = inference.adapter(ref)
    items = decode_inputs(raw, adapter.modality, settings.predict_max_input_bytes, adapter.id)
    results = inference.predict(adapter, items)
    return PredictionList(
        data=[
            Prediction(label=label, score=top[0][1], top_k=[LabelScore(label=lb, score=s) for lb, s in top])
            for label, top in results
        ]
    )
