"""API keys: ``grft keys create | list | revoke`` on the embedded database, and what the API answers to
revoked, expired and working keys (last use recorded) on the real Postgres."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.cli import main
from domain.auth import keys
from domain.auth.keys import authenticate, create_key, issue_key, revoke_key
from domain.auth.models import ApiKey
from domain.db import get_engine, session_scope
from domain.errors import ApiKeyExpired, ApiKeyRevoked, Unauthorized
from domain.settings import Settings, get_settings
from tests.conftest import call_main

JOBS = "/v1/fine_tuning/jobs"


# --- the commands -------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An embedded-mode environment (nothing configured but GRFT_HOME), migrated."""
    for name in [n for n in os.environ if n.startswith("GRFT_") and n != "GRFT_MODEL_DIR"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GRFT_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()  # ``grft db upgrade`` reads the process-wide settings
    yield tmp_path / "home"
    get_engine(Settings().database_url).dispose()
    get_settings.cache_clear()


@pytest.fixture
def migrated(home: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert call(capsys, "db", "upgrade")[0] == 0
    return home


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``grft`` in-process and return (exit status, stdout, stderr)."""
    return call_main(main, capsys, *args)


def create(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    """``grft keys create ARGS``: (key id, key)."""
    code, out, err = call(capsys, "keys", "create", *args)
    assert code == 0, err
    first, key = out.strip().splitlines()[0], out.strip().splitlines()[-1]
    return first.split()[3], key


def listed(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str | None]]:
    code, out, err = call(capsys, "keys", "list", "--json", *args)
    assert code == 0, err
    rows: list[dict[str, str | None]] = json.loads(out)
    return rows


def tenant_of(key: str) -> str:
    with session_scope(Settings().database_url) as session:
        return authenticate(session, f"Bearer {key}").name


class TestKeysCreate:
    def test_name_and_expiry(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        before = datetime.now(UTC)
        key_id, key = create(capsys, "--tenant", "acme", "--name", "ci runner", "--expires-in-days", "30")

        assert key.startswith("grft-")
        assert tenant_of(key) == "acme"
        (row,) = listed(capsys)
        assert (row["id"], row["name"], row["tenant"]) == (key_id, "ci runner", "acme")
        assert row["prefix"] == key[:9]
        assert row["expires_at"] is not None
        expires = datetime.fromisoformat(row["expires_at"])
        assert before + timedelta(days=30) <= expires <= datetime.now(UTC) + timedelta(days=30)
        assert row["status"] == "active"

    def test_without_expiry_never_expires(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        create(capsys, "--tenant", "acme")

        (row,) = listed(capsys)
        assert (row["name"], row["expires_at"], row["revoked_at"]) == (None, None, None)

    @pytest.mark.parametrize("days", ["0", "-1", "3651"])
    def test_refuses_out_of_range_expiry(
        self, migrated: Path, capsys: pytest.CaptureFixture[str], days: str
    ) -> None:
        code, _, err = call(capsys, "keys", "create", "--tenant", "acme", "--expires-in-days", days)

        assert code == 2
        assert "expires-in-days" in err
        assert listed(capsys) == []

    def test_refuses_a_name_too_long(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = call(capsys, "keys", "create", "--tenant", "acme", "--name", "n" * 129)

        assert code == 2
        assert "--name takes 1 to 128 characters" in err


class TestKeysList:
    def test_every_column_and_no_secret(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        acme_id, acme_key = create(capsys, "--tenant", "acme", "--name", "laptop")
        globex_id, globex_key = create(capsys, "--tenant", "globex")
        tenant_of(acme_key)  # a use, recorded as last_used_at

        rows = listed(capsys)
        assert [r["id"] for r in rows] == [acme_id, globex_id]
        times = {"created_at", "expires_at", "last_used_at", "revoked_at"}
        assert set(rows[0]) == {"id", "name", "tenant", "prefix", "status", *times}
        assert rows[0]["last_used_at"] is not None
        assert rows[1]["last_used_at"] is None

        code, out, _ = call(capsys, "keys", "list")
        assert code == 0
        header, *lines = out.strip().splitlines()
        assert header.split() == [
            "id", "name", "tenant", "prefix", "created", "expires", "last", "used", "revoked",
        ]  # fmt: skip
        assert len(lines) == 2
        assert lines[0].split()[:4] == [acme_id, "laptop", "acme", acme_key[:9]]
        assert acme_key not in out
        assert globex_key not in out

    def test_one_tenant(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        create(capsys, "--tenant", "acme")
        globex_id, _ = create(capsys, "--tenant", "globex")

        assert [r["id"] for r in listed(capsys, "--tenant", "globex")] == [globex_id]

    def test_unknown_tenant(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = call(capsys, "keys", "list", "--tenant", "nobody")

        assert code == 2
        assert "no tenant named 'nobody'" in err

    def test_before_the_schema_explains(self, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        home.mkdir(parents=True)
        code, _, err = call(capsys, "keys", "list")

        assert code == 2
        assert "grft db upgrade" in err


class TestKeysRevoke:
    def test_revoked_key_stops_working(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        key_id, key = create(capsys, "--tenant", "acme")
        other_id, other = create(capsys, "--tenant", "acme")

        code, out, _ = call(capsys, "keys", "revoke", key_id)

        assert code == 0
        assert f"revoked API key {key_id}" in out
        with pytest.raises(ApiKeyRevoked, match="was revoked"):
            tenant_of(key)
        assert tenant_of(other) == "acme"  # only that key
        statuses = {r["id"]: r["status"] for r in listed(capsys)}
        assert statuses == {key_id: "revoked", other_id: "active"}

    def test_twice_keeps_the_first_time(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        key_id, _ = create(capsys, "--tenant", "acme")
        call(capsys, "keys", "revoke", key_id)
        first = listed(capsys)[0]["revoked_at"]

        code, out, _ = call(capsys, "keys", "revoke", key_id)

        assert code == 0
        assert "already revoked" in out
        assert listed(capsys)[0]["revoked_at"] == first

    def test_unknown_id(self, migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = call(capsys, "keys", "revoke", "key-nothere")

        assert code == 2
        assert "no API key with id 'key-nothere'" in err


# --- the API ------------------------------------------------------------------------------------------


class TestAuthentication:
    def test_revoked_key_is_401_with_its_reason(self, client: TestClient, db: Session) -> None:
        row, key = issue_key(db, "acme")
        db.commit()
        assert client.get(JOBS, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        revoke_key(db, row.id)
        db.commit()

        response = client.get(JOBS, headers={"Authorization": f"Bearer {key}"})

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        error = response.json()["error"]
        assert error["code"] == "api_key_revoked"
        assert f"API key {key[:9]}… was revoked on" in error["message"]

    def test_expired_key_is_401_with_its_reason(self, client: TestClient, db: Session) -> None:
        key = create_key(db, "acme", expires_at=datetime.now(UTC) - timedelta(minutes=1))
        db.commit()

        response = client.get(JOBS, headers={"Authorization": f"Bearer {key}"})

        assert response.status_code == 401
        assert response.json()["error"]["code"] == "api_key_expired"
        assert "expired on" in response.json()["error"]["message"]

    def test_key_before_its_expiry_works(self, client: TestClient, db: Session) -> None:
        key = create_key(db, "acme", expires_at=datetime.now(UTC) + timedelta(hours=1))
        db.commit()

        assert client.get(JOBS, headers={"Authorization": f"Bearer {key}"}).status_code == 200

    def test_expiry_is_exact(self, db: Session) -> None:
        at = datetime(2030, 1, 1, tzinfo=UTC)
        key = create_key(db, "acme", expires_at=at)
        db.commit()

        assert authenticate(db, f"Bearer {key}", now=at - timedelta(microseconds=1)).name == "acme"
        with pytest.raises(ApiKeyExpired):
            authenticate(db, f"Bearer {key}", now=at)

    def test_unknown_and_missing_keys(self, client: TestClient) -> None:
        unknown = client.get(JOBS, headers={"Authorization": "Bearer grft-nothere"})
        missing = client.get(JOBS)

        assert (unknown.status_code, unknown.json()["error"]["code"]) == (401, "unauthorized")
        assert (missing.status_code, missing.json()["error"]["code"]) == (401, "unauthorized")

    def test_use_is_recorded_once_a_minute(self, db: Session) -> None:
        row, key = issue_key(db, "acme")
        db.commit()
        start = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)

        def last_used() -> datetime | None:
            db.expire_all()
            value = db.get_one(ApiKey, row.id).last_used_at
            return keys.aware(value) if value is not None else None

        authenticate(db, f"Bearer {key}", now=start)
        assert last_used() == start
        authenticate(db, f"Bearer {key}", now=start + timedelta(seconds=30))
        assert last_used() == start  # not a write per request
        authenticate(db, f"Bearer {key}", now=start + keys.LAST_USED_RESOLUTION)
        assert last_used() == start + keys.LAST_USED_RESOLUTION

    def test_missing_key_is_not_a_revoked_one(self, db: Session) -> None:
        with pytest.raises(Unauthorized) as refused:
            authenticate(db, "Bearer grft-nothere")
        assert type(refused.value) is Unauthorized
