"""Request body limits for every route, enforced before authentication and before parsing.

A pure ASGI middleware: a body whose ``Content-Length`` is over its route's limit is answered 413
without being read; one sent without a length (chunked) is counted as its ``http.request`` messages
arrive and cut at the first byte over the limit. Nothing here buffers: memory stays at one chunk
however large the body, and an anonymous client gets its 413 as soon as the limit is passed, not after
uploading everything to hear 401.

Limits per route: ``POST /v1/files`` takes ``max_upload_bytes`` (plus multipart framing), the predict
routes the body their most and largest inputs need (``api.inference.body.body_limit``), everything
else ``max_json_body_bytes``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge, error_body
from api.files.routes import MULTIPART_SLACK
from api.inference.body import body_limit
from domain.settings import Settings

_PREDICT = re.compile(r"^/v1/(predictions|adapters/[^/]+/predict)/?$")
_UPLOAD = re.compile(r"^/v1/files/?$")


def limit_for(settings: Settings, method: str, path: str) -> tuple[int, str]:
    """The body limit of a request and the setting it comes from, for the message."""
    if method == "POST" and _UPLOAD.match(path):
        return settings.max_upload_bytes + MULTIPART_SLACK, "file uploads (GRFT_MAX_UPLOAD_BYTES)"
    if method == "POST" and _PREDICT.match(path):
        return body_limit(settings), (
            "predict requests (GRFT_PREDICT_MAX_ITEMS x GRFT_PREDICT_MAX_INPUT_BYTES)"
        )
    return settings.max_json_body_bytes, "JSON requests (GRFT_MAX_JSON_BODY_BYTES)"


def _too_large(limit: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body over the {limit:,}-byte limit for {what}", param="body")


class BodyLimitMiddleware:
    """Answer 413 in the service's error shape to a body over its route's limit (see the module).

    Args:
        app: the application behind this middleware.
        settings: read on every request, so a changed limit applies to the next one.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        limit, what = limit_for(self.settings, scope["method"], path or "/")
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _answer(send, _too_large(limit, what))
            return

        received = 0
        tripped: PayloadTooLarge | None = None
        started = answered = False

        async def counted() -> Message:
            nonlocal received, tripped
            if tripped is not None:
                raise tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = _too_large(limit, what)
                    raise tripped
            return message

        async def guarded(message: Message) -> None:
            # Once the limit is passed, whatever the app answers (FastAPI turns a failed body read into
            # 400, a route may render its own 413) is replaced by this middleware's 413.
            nonlocal started, answered
            if tripped is not None and not started:
                if not answered:
                    answered = True
                    await _answer(send, tripped)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if tripped is None or started:
                raise
        if tripped is not None and not started and not answered:
            await _answer(send, tripped)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _answer(send: Send, error: PayloadTooLarge) -> None:
    body = json.dumps(error_body(error.code, error.message, error.param)).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is not read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
