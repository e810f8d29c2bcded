"""Tracking test fixtures: the worker's (a fresh Postgres, per-test settings, tiny-bert jobs run
in-process) and W&B in offline mode writing under the test's temp folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker.conftest import (  # noqa: F401  (the worker fixtures, shared)
    database_url,
    dataset,
    make_job,
    sent,
    settings,
    tenant,
)


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """W&B offline: runs are written under the returned folder, nothing leaves the machine."""
    folder = tmp_path / "wandb"
    folder.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield folder
    import wandb

    wandb.teardown()  # stops the W&B service process this test started
