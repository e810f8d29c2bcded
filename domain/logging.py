"""Log context and the JSON log format shared by the API and the worker.

The context (request id, tenant id, job id) lives in one ``contextvars`` variable holding a small
mutable object: a request's middleware sets it, and code that runs later in the request (the
authentication dependency, which FastAPI may run in a worker thread with a *copy* of the context)
fills it in place, so the request's last log line still sees the tenant. ``ContextFilter`` copies the
context onto every record; ``JsonFormatter`` writes one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# What an incoming X-Request-ID may look like: short, printable, no separators a log parser or a
# header injection could use. Anything else is replaced by a fresh id (and never echoed).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
CONTEXT_FIELDS = ("request_id", "tenant_id", "job_id")
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged too.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    *CONTEXT_FIELDS,
}


@dataclass
class LogContext:
    """What the current request or task is about; None where unknown."""

    request_id: str | None = None
    tenant_id: str | None = None
    job_id: str | None = None


_context: ContextVar[LogContext | None] = ContextVar("grft_log_context", default=None)


def current() -> LogContext:
    """The current context (an empty one outside any request or task)."""
    return _context.get() or LogContext()


@contextmanager
def bound(**fields: str | None) -> Iterator[LogContext]:
    """Run the block with a new context holding ``fields`` (and the enclosing one's other fields)."""
    outer = current()
    context = LogContext(**{**vars(outer), **fields})
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


def attach(**fields: str | None) -> Token[LogContext | None]:
    """Like ``bound`` for code that starts and ends in different calls (Celery's task signals):
    hand the token back to ``detach``."""
    return _context.set(LogContext(**{**vars(current()), **fields}))


def detach(token: Token[LogContext | None]) -> None:
    """Restore the context ``attach`` replaced."""
    _context.reset(token)


def set_tenant(tenant_id: str) -> None:
    """Record the caller's tenant in the current context (in place, so the request's middleware sees it)."""
    context = _context.get()
    if context is not None:
        context.tenant_id = tenant_id


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-ID`` when it is safe to log and echo, else a new random id."""
    if header is not None and _REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


class ContextFilter(logging.Filter):
    """Puts the current request, tenant and job ids on every record (None where unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current()
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, getattr(context, name))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context ids, any
    ``extra=`` fields, and the exception's type and traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            entry[name] = getattr(record, name, None)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc_info"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def json_handler(stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) writing JSON lines with the context ids."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    return handler


def use_json(handlers: list[logging.Handler]) -> None:
    """Switch ``handlers`` (those another library installed, e.g. Celery's) to JSON lines."""
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Set up the root logger for ``log_format``: ``json`` replaces its handlers with one JSON handler;
    ``text`` leaves the process's logging as it is (a terminal's usual output)."""
    if log_format != "json":
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(json_handler())
    root.setLevel(level)
