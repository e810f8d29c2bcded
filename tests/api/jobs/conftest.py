"""Fixtures of the ``/v1/fine_tuning/jobs`` tests: an empty test Redis around each test, an uploaded
training file and a created job (the service fixtures come from ``tests/api/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from tests.api.conftest import REDIS_URL
from tests.api.jobs.helpers import Auth, create
from tests.api.test_files import upload


@pytest.fixture(autouse=True)
def broker() -> Iterator[redis.Redis]:
    """The test Redis database, empty before and after each test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def file_id(client: TestClient, auth: Auth) -> str:
    return str(upload(client, auth).json()["id"])


@pytest.fixture
def job_id(client: TestClient, auth: Auth, file_id: str) -> str:
    return str(create(client, auth, file_id).json()["id"])
