"""What the sync and async clients share: one description of a request (``Call``), the retry policy,
the error mapping and the Server-Sent-Events decoder. Only the sending differs between the two."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from grft_client._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InternalServerError,
    error_from_response,
)
from grft_client.types import JobEvent

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
# Backoff: 0.5 s, 1 s, 2 s, ... with jitter, and never longer than this, even if Retry-After asks for it.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = "grft-client/0.1"


def path(template: str, *ids: str) -> str:
    """``path("/v1/files/{}", file_id)`` with each id escaped as one path segment."""
    return template.format(*(quote(i, safe="") for i in ids))


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer.

    ``retry``: the request may be sent again after a connection error or a 429/502/503/504 (reads,
    deletes, predictions, and creations that carry an ``Idempotency-Key``).
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    files: Any = None
    data: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retry: bool = True
    on_done: Callable[[], None] | None = None  # run once the request is over (closes an upload's file)


def clean_params(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def should_retry(error: APIStatusError) -> bool:
    """A 429 of a standing quota (``quota_exceeded``) does not pass by waiting a few seconds."""
    return error.status in RETRY_STATUSES and error.code != "quota_exceeded"


def backoff_s(attempt: int, retry_after: float | None = None) -> float:
    """The wait before retry number ``attempt`` (1, 2, ...): the server's Retry-After when it gives one,
    else exponential with full jitter (so many clients do not retry in step)."""
    if retry_after is not None:
        return min(retry_after, BACKOFF_CAP_S)
    ceiling: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def transport_error(exc: httpx.TransportError, request: httpx.Request | None = None) -> APIConnectionError:
    where = f" ({request.method} {request.url})" if request is not None else ""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"the request timed out{where}: {exc.__class__.__name__}")
    return APIConnectionError(f"cannot reach the server{where}: {exc}")


def parse_response(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise error_from_response(response)
    if call.parse is raw_bytes:
        return call.parse(response.content)
    return call.parse(response.json())


def raw_bytes(content: bytes) -> bytes:
    return content


def check(response: httpx.Response, body: bytes | None = None) -> None:
    """Raise the typed error of an error answer (``body``: what was read of a streamed one)."""
    if response.status_code >= 400:
        raise error_from_response(response, body)


class SSEDecoder:
    """The ``text/event-stream`` format, line by line: ``id:``/``data:`` fields, a blank line ends an
    event, ``:`` lines are keep-alive comments. ``feed`` returns an event's data when one is complete;
    ``done`` turns true at ``data: [DONE]``, and ``last_id`` is the id of the last event returned."""

    def __init__(self) -> None:
        self.data: list[str] = []
        self.event_id: str | None = None
        self.last_id: str | None = None
        self.done = False

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "id":
            self.event_id = value
        return None

    def _dispatch(self) -> str | None:
        data, event_id = "\n".join(self.data), self.event_id
        self.data, self.event_id = [], None
        if not data:
            return None
        if data == "[DONE]":
            self.done = True
            return None
        self.last_id = event_id
        return data


def job_event(data: str) -> JobEvent:
    return JobEvent.model_validate_json(data)


def stream_item(data: str, model: type[M]) -> M:
    """One event of a generation stream; an error the server sends mid-stream raises."""
    parsed = json.loads(data)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        param = error.get("param")
        raise InternalServerError(
            str(error.get("message") or "the stream failed"),
            status=500,
            code=str(error.get("code") or "server_error"),
            param=str(param) if param is not None else None,
            body=parsed,
        )
    return model.model_validate(parsed)
