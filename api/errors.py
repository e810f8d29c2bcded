"""The one rendering of every error, ``{"error": {"code", "message", "param", "type"}}`` (the tree of
error classes is drawn in ``domain.errors``).

``code`` is ours and specific (``invalid_dataset``, ``job_not_finished``); ``type`` is OpenAI's class of
error, derived from the HTTP status (``invalid_request_error``, ``authentication_error``, ...), so that
OpenAI clients sort our errors as they sort OpenAI's. OpenAI answers a bad request with 400, never 422:
every error whose class says 422 (a request body that fails validation, a rejected dataset, an input
that cannot be decoded) is rendered as 400 ``invalid_request_error``, ``param`` naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    JobNotFinished,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
)
from grft_core.errors import GrftError

__all__ = [
    "BadRequest",
    "Conflict",
    "ErrorResponse",
    "Forbidden",
    "JobNotFinished",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "Unauthorized",
    "error_body",
    "error_responses",
    "error_type",
    "http_status",
    "install_handlers",
]


#: OpenAI's error ``type`` for each status we answer with; anything else 4xx is a bad request.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def http_status(status_code: int) -> int:
    """The status a class's ``status_code`` is answered with (422 becomes OpenAI's 400)."""
    return 400 if status_code == 422 else status_code


def error_type(status_code: int) -> str:
    """OpenAI's ``type`` for an answer of ``status_code``."""
    if status_code >= 500:
        return "server_error"
    return ERROR_TYPES.get(http_status(status_code), "invalid_request_error")


def error_body(code: str, message: str, param: str | None = None, status: int = 400) -> dict[str, Any]:
    """The one error shape."""
    return {"error": {"code": code, "message": message, "param": param, "type": error_type(status)}}


def error_responses(*errors: type[GrftError]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that may raise ``errors`` (several classes may share a status)."""
    out: dict[int | str, dict[str, Any]] = {}
    for e in errors:
        status = http_status(e.status_code)
        text = e.__doc__ or e.code
        if status in out:
            text = f"{out[status]['description']} | {text}"
        out[status] = {"description": text, "model": ErrorResponse}
    return out


class ErrorDetail(BaseModel):
    code: str = Field(description="Our specific code, e.g. invalid_dataset or job_not_finished.")
    message: str
    param: str | None = Field(description="The request field at fault, when there is one.")
    type: str = Field(description="OpenAI's class of error: invalid_request_error, not_found_error, ...")


class ErrorResponse(BaseModel):
    """Every error: 400 for any invalid request (never 422), 401, 403, 404, 409, 413, 429, 5xx."""

    error: ErrorDetail


# The name pydantic gives a member of a union in an error's location (``constrained-int``,
# ``literal['auto']``, ``function-after[...]``): not a field, so not part of ``param``.
_SCHEMA_TAG = re.compile(r"^(constrained-[a-z]+|[a-z-]+\[.*\]|int|float|str|bool|bytes|list|dict|none)$")


def _openapi_without_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents request validation as 422 on every route; we answer it with 400."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)
        ref = "#/components/schemas/{model}"
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error = ErrorResponse.model_json_schema(ref_template=ref)
        components.update(error.pop("$defs", {}))
        components["ErrorResponse"] = error
        invalid = {
            "description": "Invalid request: a field fails validation (``param`` names it).",
            "content": {"application/json": {"schema": {"$ref": ref.format(model="ErrorResponse")}}},
        }
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses") if isinstance(operation, dict) else None
                if isinstance(responses, dict) and responses.pop("422", None) is not None:
                    responses.setdefault("400", invalid)
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    return openapi


def install_handlers(app: FastAPI) -> None:
    """Render every error as ``{"error": {...}}`` with the right status."""

    @app.exception_handler(GrftError)
    async def _grft(_: Request, exc: GrftError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        if (retry := getattr(exc, "retry_after", None)) is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry)))
        status = http_status(exc.status_code)
        body = error_body(exc.code, exc.message, exc.param, status)
        return JSONResponse(body, status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        loc = [p for p in loc if not _SCHEMA_TAG.match(p)]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid")
        return JSONResponse(error_body("invalid_request", message, param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = error_body("http_error", str(exc.detail), None, exc.status_code)
        return JSONResponse(body, exc.status_code)

    app.openapi = _openapi_without_422(app)  # type: ignore[method-assign]
