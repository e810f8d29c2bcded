"""Real adapters for the service tests: trained here once per session, stored with a database row."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from domain.adapters.models import Adapter
from domain.artifacts import ArtifactStore
from domain.auth.repository import tenant_by_name
from domain.ids import new_id
from domain.settings import Settings
from grft_core.data.samples import digits_image_folder
from grft_core.method.config import GRFTConfig
from grft_core.pipeline import train_to_folder
from tests.conftest import make_texts

TEXT_CLASSES = ["sport", "business", "arts"]


def train_tiny_cnn(root: Path, registry, *, classes: list[str] | None = None, seed: int = 0) -> Path:
    """A real GRFT adapter of ``tiny-cnn`` on digits at 32 px (8 images per class; all classes or some)."""
    data = digits_image_folder(root / "data", size=32, limit_per_class=8)
    if classes is not None:
        for folder in data.iterdir():
            if folder.name not in classes:
                shutil.rmtree(folder)
    config = GRFTConfig(k=1, epochs=1, image_size=32, selection_samples=16, batch_size=16, seed=seed)
    out = root / "adapter"
    train_to_folder("tiny-cnn", str(data), out, config, registry=registry)
    return out


def store_adapter(
    db: Session,
    settings: Settings,
    folder: Path,
    *,
    tenant: str = "acme",
    created_at: datetime | None = None,
    job_id: str | None = None,
) -> Adapter:
    """Upload ``folder`` to the settings' artifact store as ``adapters/<id>`` and insert its row."""
    owner = tenant_by_name(db, tenant)
    assert owner is not None, f"tenant {tenant} has no key yet"
    adapter_id = new_id("adapter")
    uri = ArtifactStore(settings.artifact_url).put_folder(f"adapters/{adapter_id}", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["metrics"] = {
        k: v for k, v in json.loads((folder / "metrics.json").read_text()).items() if k != "history"
    }
    row = Adapter(
        id=adapter_id,
        tenant_id=owner.id,
        job_id=job_id,
        base_model=config["base_model"],
        method=config["method"],
        uri=uri,
        bytes=sum(p.stat().st_size for p in folder.iterdir()),
        config=config,
        created_at=created_at or datetime.now(UTC),
    )
    db.add(row)
    db.commit()
    return row


@pytest.fixture(scope="session")
def cnn10(tmp_path_factory, registry) -> Path:
    return train_tiny_cnn(tmp_path_factory.mktemp("cnn10"), registry)


@pytest.fixture(scope="session")
def cnn3(tmp_path_factory, registry) -> Path:
    """Same base as ``cnn10``, another head size: three classes."""
    return train_tiny_cnn(tmp_path_factory.mktemp("cnn3"), registry, classes=["1", "4", "7"], seed=1)


@pytest.fixture(scope="session")
def bert(tmp_path_factory, registry) -> Path:
    root = tmp_path_factory.mktemp("bert")
    texts, labels = make_texts(30)
    with (root / "train.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((t, TEXT_CLASSES[y]) for t, y in zip(texts, labels, strict=True))
    config = GRFTConfig(k=1, epochs=1, selection_samples=16, batch_size=16, max_length=32)
    train_to_folder("tiny-bert", str(root / "train.csv"), root / "adapter", config, registry=registry)
    return root / "adapter"


@pytest.fixture(scope="session")
def digit_pngs(cnn10) -> list[bytes]:
    """Real digit PNGs (the training folder's), one of each class 0-5."""
    data = cnn10.parent / "data" / "digits"
    return [sorted((data / str(d)).iterdir())[0].read_bytes() for d in range(6)]


@pytest.fixture
def add(db, settings, api_key, other_key):
    def add(folder: Path, **kwargs) -> Adapter:
        return store_adapter(db, settings, folder, **kwargs)

    return add
