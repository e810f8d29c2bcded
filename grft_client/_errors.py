"""The client's errors: one tree, so that a caller can catch as broadly or as narrowly as it needs.

GrftClientError
├── ConfigurationError            no API URL, an unreadable config file, a bad profile
├── APIConnectionError            the server could not be reached (after the retries)
│   └── APITimeoutError           it was reached but did not answer in time
└── APIStatusError                the server answered 4xx/5xx: status, code, param, message
    ├── BadRequestError           400
    ├── AuthenticationError       401
    ├── PermissionDeniedError     403
    ├── NotFoundError             404
    ├── ConflictError             409
    ├── PayloadTooLargeError      413
    ├── UnprocessableEntityError  422
    ├── RateLimitError            429 (quota_exceeded or rate_limited)
    └── InternalServerError       5xx
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class GrftClientError(Exception):
    """Every error this package raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(GrftClientError):
    """The client is not configured: no API URL, or a config file or profile that cannot be used."""


class APIConnectionError(GrftClientError):
    """The request did not get an answer: refused connection, DNS failure, dropped connection."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIStatusError(GrftClientError):
    """An error answer: the HTTP ``status`` and the API's ``{"error": {code, message, param}}``."""

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        param: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" [{self.param}]" if self.param and self.param not in self.message else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    status_code = 404


class ConflictError(APIStatusError):
    status_code = 409


class PayloadTooLargeError(APIStatusError):
    status_code = 413


class UnprocessableEntityError(APIStatusError):
    status_code = 422


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    status_code = 500


_BY_STATUS: dict[int, type[APIStatusError]] = {
    cls.status_code: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        UnprocessableEntityError,
        RateLimitError,
    )
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date, or nothing: the caller's own backoff applies


def error_from_response(response: httpx.Response, body: bytes | None = None) -> APIStatusError:
    """The typed error for an error answer, read from the API's error body when it has one."""
    raw = response.content if body is None else body
    code, message, param, parsed = f"http_{response.status_code}", "", None, None
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        param = str(error["param"]) if error.get("param") is not None else None
    if not message:
        text = raw.decode("utf-8", "replace").strip() if raw else ""
        message = text[:500] or response.reason_phrase or "error"
    status = response.status_code
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    return cls(
        message, status=status, code=code, param=param, body=parsed, retry_after=_retry_after(response)
    )
