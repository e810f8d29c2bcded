"""With ``GRFT_MIGRATE_ON_START=false`` the API migrates nothing and waits for the schema (a migrate
job's); ``grft worker`` always waits. Real Postgres databases: one empty, one migrated."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text

from api.cli import main, upgrade_database
from api.cli.db import SchemaNotReady, schema_revisions, wait_for_schema
from domain.db import get_engine
from domain.settings import Settings
from tests.conftest import call_main
from tests.postgres import PG_ADMIN


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with no schema at all (the migrate job has not run)."""
    name = f"grft_obs_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def tables(url: str) -> set[str]:
    return set(inspect(get_engine(url)).get_table_names())


class TestWaitForSchema:
    def test_times_out_on_an_empty_database(self, empty_database: str) -> None:
        with pytest.raises(SchemaNotReady, match="no revision.*GRFT_SCHEMA_WAIT_SECONDS"):
            wait_for_schema(Settings(database_url=empty_database), timeout_s=0.2, poll_s=0.05)
        assert tables(empty_database) == set()  # waiting never migrates

    def test_returns_once_migrated(self, empty_database: str) -> None:
        settings = Settings(database_url=empty_database)
        upgrade_database(settings)
        wait_for_schema(settings, timeout_s=0)
        current, heads = schema_revisions(settings)
        assert current == heads

    def test_unreachable_database_is_waited_for_then_reported(self) -> None:
        settings = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none")
        with pytest.raises(SchemaNotReady, match="not reachable"):
            wait_for_schema(settings, timeout_s=0.2, poll_s=0.05)


class TestCommands:
    @pytest.fixture
    def env(self, empty_database: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
        monkeypatch.setenv("GRFT_DATABASE_URL", empty_database)
        monkeypatch.setenv("GRFT_BROKER_URL", "redis://127.0.0.1:6379/13")
        monkeypatch.setenv("GRFT_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("GRFT_SCHEMA_WAIT_SECONDS", "0.3")
        from domain.settings import get_settings

        get_settings.cache_clear()
        yield empty_database
        get_settings.cache_clear()

    def test_serve_without_migrate_on_start_waits_and_migrates_nothing(
        self, env: str, capsys, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("GRFT_MIGRATE_ON_START", "false")
        code, _out, err = call_main(main, capsys, "serve", "--port", "1")
        assert code == 2
        assert "schema" in err
        assert "grft db upgrade" in err
        assert tables(env) == set()

    def test_worker_waits_for_the_schema(self, env: str, capsys) -> None:
        code, _out, err = call_main(main, capsys, "worker")
        assert code == 2
        assert "schema" in err
        assert tables(env) == set()
