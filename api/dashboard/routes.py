"""``/`` and ``/dashboard/{asset}``: the dashboard's static files, under a strict Content-Security-Policy.

The page is plain HTML, CSS and JavaScript from this package (no CDN, no inline script or style), so the
policy allows nothing but this origin: ``img-src`` adds ``blob:`` for the playground's image preview.
The browser talks to the same ``/v1`` API as every other client, with the key the user signs in with.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Response

from api.errors import NotFound

STATIC = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load: a new release's files replace the old ones at once.
    "Cache-Control": "no-cache",
}
#: Every file the dashboard serves, and its media type; nothing else under ``static/`` is reachable.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _asset(name: str) -> Response:
    return Response(_read(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/")
def index() -> Response:
    return _asset("index.html")


@router.get("/dashboard/{name}")
def asset(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        raise NotFound(f"no dashboard file {name!r}", param="name")
    return _asset(name)
