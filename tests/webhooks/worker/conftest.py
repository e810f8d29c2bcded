"""The worker fixtures (a fresh Postgres, tiny-bert jobs run in-process), with webhooks allowed to
reach the test's receiver on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.settings import Settings
from tests.webhooks.conftest import receiver  # noqa: F401
from tests.worker.conftest import (  # noqa: F401  (the worker fixtures, shared)
    database_url,
    dataset,
    make_job,
    sent,
    tenant,
)
from tests.worker.conftest import settings as worker_settings


@pytest.fixture
def settings(database_url: str, tmp_path: Path, model_store: Path) -> Settings:  # noqa: F811
    base: Settings = worker_settings.__wrapped__(database_url, tmp_path, model_store)  # type: ignore[attr-defined]
    return base.model_copy(update={"webhook_allow_hosts": ["127.0.0.1"]})
