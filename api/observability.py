"""Request context for logs: every request gets an id, echoed as ``X-Request-ID`` on its response and
carried by every log line written while it runs (``domain.logging``), with the caller's tenant once
authentication has found it; one access line per request on the ``grft.access`` logger.

A client's own ``X-Request-ID`` is kept when it is short and plain (see ``domain.logging``), so a
request can be followed from a load balancer or a client's logs into ours; anything else is replaced.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from api.metrics import route_label
from domain import logging as log_context

HEADER = "x-request-id"
access_log = logging.getLogger("grft.access")
# Probes and scrapes arrive every few seconds from every orchestrator and Prometheus: not worth a line.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestContextMiddleware:
    """Binds the request's id (and later its tenant) for logging; adds ``X-Request-ID`` to every
    response, the 500 of an unhandled exception included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", ()) if k == HEADER.encode()), None)
        request_id = log_context.request_id_from(header.decode("latin-1") if header is not None else None)
        status, started_at = 500, time.perf_counter()
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = int(message["status"]), True
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER.encode()]
                message = {**message, "headers": [*headers, (HEADER.encode(), request_id.encode())]}
            await send(message)

        with log_context.bound(request_id=request_id, tenant_id=None, job_id=None) as context:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                access_log.exception("unhandled error in %s %s", scope.get("method"), route_label(scope))
                if not response_started:
                    # Starlette's last-resort 500 is plain text without our header: answer in our
                    # error shape first (it then only re-raises, for the server's own log).
                    await _internal_error(send_with_id, request_id)
                raise
            finally:
                route = route_label(scope)
                access_log.log(
                    logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
                    "%s %s %d",
                    scope.get("method"),
                    route,
                    status,
                    extra={
                        "method": scope.get("method"),
                        "route": route,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started_at) * 1000, 2),
                        "tenant_id": context.tenant_id,
                    },
                )


async def _internal_error(send: Send, request_id: str) -> None:
    body = json.dumps(
        error_body("internal_error", f"internal error (request {request_id})", None, 500)
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_request_context(app: FastAPI) -> None:
    """Add the middleware outside every other one, so that all their responses carry the id."""
    app.add_middleware(RequestContextMiddleware)
