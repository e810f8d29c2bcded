"""``grft db``: the service database's schema, migrated by Alembic (also used by ``serve`` and tests)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import typer

from domain.db import get_engine
from domain.settings import Settings, get_settings
from grft_core.cli import app

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
log = logging.getLogger(__name__)

db_app = typer.Typer(no_args_is_help=True, help="The service database.")
app.add_typer(db_app, name="db")


def _alembic_config(settings: Settings) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = settings.database_url
    return config


def upgrade_database(settings: Settings) -> None:
    """``alembic upgrade head`` on ``settings.database_url`` (creating the SQLite folder if needed)."""
    from alembic import command
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(_alembic_config(settings), "head")


class SchemaNotReady(Exception):
    """The database's schema did not reach this code's migration head in time."""


def schema_revisions(settings: Settings) -> tuple[set[str], set[str]]:
    """(the revisions the database is at, the heads of this code's migrations)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(_alembic_config(settings)).get_heads())
    with get_engine(settings.database_url).connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    return current, heads


def wait_for_schema(settings: Settings, timeout_s: float, poll_s: float = 1.0) -> None:
    """Return once the database is at this code's migration head (a migrate job runs elsewhere);
    a database that does not answer yet is waited for too. Raises ``SchemaNotReady`` after
    ``timeout_s``, saying which revision the database is at."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            current, heads = schema_revisions(settings)
            if current == heads:
                return
            state = f"at {', '.join(sorted(current)) or 'no revision'}, expected {', '.join(sorted(heads))}"
        except Exception as exc:  # noqa: BLE001 - not reachable yet is a reason to wait, not to stop
            state = f"not reachable ({type(exc).__name__})"
        if time.monotonic() >= deadline:
            raise SchemaNotReady(
                f"the database schema is {state} after {timeout_s:g} s (GRFT_SCHEMA_WAIT_SECONDS); "
                "run 'grft db upgrade' (the migrate job)"
            )
        log.info("waiting for the database schema: %s", state)
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    settings = get_settings()
    upgrade_database(settings)
    typer.echo("database is at the latest schema")
