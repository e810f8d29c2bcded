"""Alembic environment: the schema of ``domain.models`` on the database of ``GRFT_DATABASE_URL``."""

from __future__ import annotations

from alembic import context

from domain.db import get_engine
from domain.models import Base
from domain.settings import Settings

config = context.config
url = config.attributes.get("url") or Settings().database_url
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with get_engine(url).connect() as conn:
        # render_as_batch: SQLite can only alter tables by copying them.
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
