"""Service test fixtures: a real Postgres database migrated once per session, each test inside a
transaction rolled back at the end, and API keys for two tenants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from api.deps import get_session
from api.main import create_app
from domain.auth.keys import create_key
from domain.settings import Settings
from tests.api.fixtures import add, bert, cnn3, cnn10, digit_pngs  # noqa: F401  (shared fixtures)
from tests.postgres import fresh_database

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/15"


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    return cfg


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh Postgres database for this test session, upgraded to head, dropped at the end."""
    with fresh_database("grft_test") as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        secret_key="test-secret",
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=REDIS_URL,
        artifact_url=(tmp_path / "artifacts").as_uri(),
        max_upload_bytes=2 * 1024 * 1024,
    )


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    conn = engine.connect()
    outer = conn.begin()
    yield conn
    outer.rollback()
    conn.close()


@pytest.fixture
def db(connection: Connection) -> Iterator[Session]:
    """A session whose commits are savepoints inside the test's transaction."""
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()


@pytest.fixture
def app(settings: Settings, db: Session):  # type: ignore[no-untyped-def]
    application = create_app(settings)

    def _session() -> Iterator[Session]:
        yield db
        db.commit()

    application.dependency_overrides[get_session] = _session
    return application


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app) as c:
        yield c


@pytest.fixture
def api_key(db: Session) -> str:
    key = create_key(db, "acme")
    db.commit()
    return key


@pytest.fixture
def other_key(db: Session) -> str:
    key = create_key(db, "globex")
    db.commit()
    return key


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def other_auth(other_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {other_key}"}
