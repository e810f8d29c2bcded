"""Migrations are the only way the schema changes: models and migrations agree, on both databases."""

from __future__ import annotations

from alembic import command

from tests.api.conftest import alembic_config


def test_models_match_migrations_on_postgres(database_url: str) -> None:
    command.check(alembic_config(database_url))


def test_upgrade_and_check_on_sqlite(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'grft.db'}"
    command.upgrade(alembic_config(url), "head")
    command.check(alembic_config(url))
    command.downgrade(alembic_config(url), "base")
    from domain.db import get_engine

    get_engine(url).dispose()
