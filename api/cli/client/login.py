"""``grft login`` and ``grft config show``: the client's config file (0600), one profile per server."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from api.cli.client.common import EXIT_USAGE, errors, fail, fields, out
from grft_client import Client, ConfigurationError, config_path, resolve, save_profile
from grft_core.cli import app

config_app = typer.Typer(no_args_is_help=True, help="The client's configuration (server URL, key).")
app.add_typer(config_app, name="config")

Profile = Annotated[str | None, typer.Option(help="Profile name (default: GRFT_PROFILE, then 'default').")]


def masked(key: str | None) -> str | None:
    return None if not key else (key[:9] + "…" if len(key) > 12 else "…")


@app.command("login")
def login(
    url: Annotated[str, typer.Option("--url", help="The server, e.g. http://127.0.0.1:8000.")],
    key: Annotated[
        str | None, typer.Option("--key", help="The API key (asked for, hidden, when not given).")
    ] = None,
    no_key: Annotated[bool, typer.Option("--no-key", help="A server run with --no-auth.")] = False,
    profile: Profile = None,
    verify: Annotated[bool, typer.Option(help="Check the URL and key against the server first.")] = True,
) -> None:
    """Save a server URL and API key to the config file (mode 0600) as a profile."""
    name = profile or os.environ.get("GRFT_PROFILE") or "default"
    if key is None and not no_key:
        key = typer.prompt("API key", hide_input=True)
    try:
        if verify:
            with errors(), Client(url, key or None, max_retries=0) as client:
                client.models.list()  # an authenticated call: a wrong key answers 401 here
        path = save_profile(name, url, key or None)
    except ConfigurationError as exc:
        raise fail(exc.message, EXIT_USAGE) from exc
    out.print(f"saved profile {name!r} to {path} (readable by you only)", highlight=False)


@config_app.command("show")
def show(
    profile: Profile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The server and key the client commands would use, and where they come from (key masked)."""
    try:
        config = resolve(profile=profile)
    except ConfigurationError as exc:
        raise fail(exc.message, EXIT_USAGE) from exc
    shown = {
        "api_url": config.api_url,
        "api_key": masked(config.api_key),
        "profile": config.profile,
        "source": config.source,
        "config_file": str(config_path()),
    }
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
    else:
        fields(list(shown.items()))
