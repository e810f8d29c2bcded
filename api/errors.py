"""The one rendering of every error, ``{"error": {"code", "message", "param"}}`` (the tree of error
classes is drawn in ``domain.errors``)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.errors import (
    BadRequest,
    Conflict,
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
    "JobNotFinished",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "Unauthorized",
    "error_body",
    "error_responses",
    "install_handlers",
]


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The one error shape."""
    return {"error": {"code": code, "message": message, "param": param, "type": code}}


def error_responses(*errors: type[GrftError]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that may raise ``errors``."""
    return {e.status_code: {"description": e.__doc__ or e.code} for e in errors}


def install_handlers(app: FastAPI) -> None:
    """Render every error as ``{"error": {...}}`` with the right status."""

    @app.exception_handler(GrftError)
    async def _grft(_: Request, exc: GrftError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        if (retry := getattr(exc, "retry_after", None)) is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry)))
        return JSONResponse(error_body(exc.code, exc.message, exc.param), exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid")
        return JSONResponse(error_body("invalid_request", message, param), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body("http_error", str(exc.detail)), exc.status_code)
