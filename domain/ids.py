"""Public object ids: a type prefix and random URL-safe characters (``ftjob-…``, ``file-…``)."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A new id such as ``ftjob-3kq9…`` (22 random characters, 128+ bits)."""
    return f"{prefix}-{secrets.token_urlsafe(16).replace('_', 'x').replace('-', 'y')}"
