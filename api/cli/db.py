"""``grft db``: the service database's schema, migrated by Alembic (also used by ``serve`` and tests)."""

from __future__ import annotations

from pathlib import Path

import typer

from domain.settings import Settings, get_settings
from grft_core.cli import app

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

db_app = typer.Typer(no_args_is_help=True, help="The service database.")
app.add_typer(db_app, name="db")


def upgrade_database(settings: Settings) -> None:
    """``alembic upgrade head`` on ``settings.database_url`` (creating the SQLite folder if needed)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = settings.database_url
    command.upgrade(config, "head")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    settings = get_settings()
    upgrade_database(settings)
    typer.echo("database is at the latest schema")
