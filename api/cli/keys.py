"""``grft keys``: API keys. Building blocks take the settings by argument (tests use them); the commands
build ``Settings()`` once."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from api.cli.common import fail
from domain.settings import Settings
from grft_core.cli import app

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from domain.auth.keys import KeyInfo

keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
app.add_typer(keys_app, name="keys")

KEY_MAX_DAYS = 3650


@contextlib.contextmanager
def _key_database(settings: Settings) -> Iterator[Session]:
    """A unit of work on the keys; a database without the schema, or a missing key or tenant, ends the
    command with one ``error:`` line."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from domain.db import session_scope
    from domain.errors import NotFound

    try:
        with session_scope(settings.database_url) as session:
            yield session
    except (OperationalError, ProgrammingError) as exc:
        raise fail(f"cannot use the key table ({exc.orig}); run 'grft db upgrade' first?") from exc
    except NotFound as exc:
        raise fail(exc.message) from exc


def create_api_key(
    settings: Settings,
    tenant: str,
    *,
    name: str | None = None,
    expires_in_days: int | None = None,
    now: datetime | None = None,
) -> tuple[KeyInfo, str]:
    """A new key for ``tenant`` (created if new): its listing and the key in clear (shown once)."""
    from domain.auth.keys import KeyInfo, issue_key
    from domain.db import utcnow

    now = now or utcnow()
    expires_at = now + timedelta(days=expires_in_days) if expires_in_days is not None else None
    with _key_database(settings) as session:
        row, key = issue_key(session, tenant, name=name, expires_at=expires_at)
        return KeyInfo.of(row, tenant), key


def list_api_keys(settings: Settings, tenant: str | None = None) -> list[KeyInfo]:
    from domain.auth.keys import list_keys

    with _key_database(settings) as session:
        return list_keys(session, tenant)


def revoke_api_key(settings: Settings, key_id: str) -> tuple[KeyInfo, bool]:
    """Revoke a key; returns it and whether this call revoked it (False: it already was)."""
    from domain.auth.keys import revoke_key

    with _key_database(settings) as session:
        return revoke_key(session, key_id)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


def keys_table(keys: list[KeyInfo], now: datetime) -> str:
    """The keys as aligned text columns (times in UTC)."""
    header = ("id", "name", "tenant", "prefix", "created", "expires", "last used", "revoked")
    rows = [header]
    for k in keys:
        expires = _when(k.expires_at)
        if k.status(now) == "expired":
            expires += " (expired)"
        row = (k.id, k.name or "-", k.tenant, k.prefix, _when(k.created_at), expires,
               _when(k.last_used_at), _when(k.revoked_at))  # fmt: skip
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name (created if new).")],
    name: Annotated[str | None, typer.Option(help="What the key is for, shown by 'keys list'.")] = None,
    expires_in_days: Annotated[
        int | None,
        typer.Option(min=1, max=KEY_MAX_DAYS, help="Days until the key stops working (default: never)."),
    ] = None,
) -> None:
    """Create an API key for TENANT; the key is printed once, on the last line."""
    if not 0 < len(tenant) <= 128:
        raise fail("--tenant takes 1 to 128 characters")
    if name is not None and not 0 < len(name) <= 128:
        raise fail("--name takes 1 to 128 characters")
    settings = Settings()
    info, key = create_api_key(settings, tenant, name=name, expires_in_days=expires_in_days)
    until = f", valid until {_when(info.expires_at)} UTC" if info.expires_at is not None else ""
    typer.echo(f"created API key {info.id} for tenant {tenant!r}{until}; it is shown only this once:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array (times in ISO 8601, UTC).")] = False,
) -> None:
    """List API keys (never the keys themselves: their first characters, PREFIX)."""
    from domain.db import utcnow

    settings = Settings()
    keys = list_api_keys(settings, tenant)
    now = utcnow()
    if as_json:
        typer.echo(json.dumps([k.to_dict(now) for k in keys], indent=2))
    elif keys:
        typer.echo(keys_table(keys, now))
    else:
        typer.echo("no API keys" + (f" for tenant {tenant!r}" if tenant else ""))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see 'grft keys list').")]) -> None:
    """Revoke an API key: requests with it answer 401 from now on."""
    settings = Settings()
    info, revoked = revoke_api_key(settings, key_id)
    if revoked:
        typer.echo(f"revoked API key {info.id} ({info.prefix}…) of tenant {info.tenant!r}")
    else:
        typer.echo(f"API key {info.id} was already revoked on {_when(info.revoked_at)} UTC")
