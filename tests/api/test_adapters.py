"""``/v1/adapters``: list, retrieve, download (as stored and as PEFT LoRA), delete — on real adapters
trained here, stored in the test's artifact store, with rows in the real database."""

from __future__ import annotations

import gc
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from api.adapters.service import Member, content, tar_stream
from domain.adapters.models import Adapter
from domain.artifacts import ArtifactStore
from domain.settings import Settings
from tests.api.fixtures import store_adapter, train_tiny_cnn

AddAdapter = Callable[..., Adapter]


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory: pytest.TempPathFactory, registry) -> Path:
    return train_tiny_cnn(tmp_path_factory.mktemp("cnn"), registry)


@pytest.fixture
def add_adapter(db: Session, settings: Settings, api_key: str, other_key: str, cnn_dir: Path) -> AddAdapter:
    def add(folder: Path = cnn_dir, **kwargs) -> Adapter:
        return store_adapter(db, settings, folder, **kwargs)

    return add


def _untar(content: bytes, dest: Path) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        archive.extractall(dest, filter="data")
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


class TestListAdapters:
    def test_newest_first_with_cursor_pages(self, client, auth, add_adapter) -> None:
        now = datetime.now(UTC)
        rows = [add_adapter(created_at=now - timedelta(minutes=m)) for m in (3, 2, 1)]
        newest_first = [r.id for r in reversed(rows)]

        first = client.get("/v1/adapters", params={"limit": 2}, headers=auth).json()
        second = client.get(
            "/v1/adapters", params={"limit": 2, "after": first["last_id"]}, headers=auth
        ).json()

        assert first["object"] == "list"
        assert [a["id"] for a in first["data"]] == newest_first[:2]
        assert (first["has_more"], first["first_id"], first["last_id"]) == (True, *newest_first[:2])
        assert [a["id"] for a in second["data"]] == newest_first[2:]
        assert second["has_more"] is False

    def test_empty_list(self, client, auth) -> None:
        body = client.get("/v1/adapters", headers=auth).json()
        assert body == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}

    def test_unknown_cursor_is_404(self, client, auth) -> None:
        response = client.get("/v1/adapters", params={"after": "adapter-nope"}, headers=auth)
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "after"

    def test_limit_is_bounded(self, client, auth) -> None:
        assert client.get("/v1/adapters", params={"limit": 101}, headers=auth).status_code == 400

    def test_anonymous_is_401(self, client) -> None:
        assert client.get("/v1/adapters").status_code == 401

    def test_other_tenant_sees_none(self, client, other_auth, add_adapter) -> None:
        add_adapter()
        assert client.get("/v1/adapters", headers=other_auth).json()["data"] == []


class TestRetrieveAdapter:
    def test_fields(self, client, auth, add_adapter, cnn_dir) -> None:
        row = add_adapter(job_id="ftjob-abc")
        config = json.loads((cnn_dir / "adapter_config.json").read_text())

        body = client.get(f"/v1/adapters/{row.id}", headers=auth).json()

        assert body["id"] == row.id
        assert body["object"] == "adapter"
        assert body["created_at"] == int(row.created_at.timestamp())
        assert (body["base_model"], body["method"], body["job_id"]) == ("tiny-cnn", "grft", "ftjob-abc")
        assert body["bytes"] == row.bytes > 0
        assert body["labels"] == [str(d) for d in range(10)]
        assert body["trainable_params"] == config["trainable_params"] > 0
        assert body["metrics"]["best_val_accuracy"] == config["metrics"]["best_val_accuracy"]

    def test_anonymous_is_401(self, client, add_adapter) -> None:
        response = client.get(f"/v1/adapters/{add_adapter().id}")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"

    def test_other_tenant_is_404(self, client, other_auth, add_adapter) -> None:
        response = client.get(f"/v1/adapters/{add_adapter().id}", headers=other_auth)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"

    def test_unknown_is_404(self, client, auth) -> None:
        assert client.get("/v1/adapters/adapter-missing", headers=auth).status_code == 404


class TestAdapterContent:
    def test_tar_extracts_to_the_stored_files(self, client, auth, add_adapter, cnn_dir, tmp_path) -> None:
        row = add_adapter()

        response = client.get(f"/v1/adapters/{row.id}/content", headers=auth)

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-tar"
        assert f'filename="{row.id}.tar"' in response.headers["content-disposition"]
        assert len(response.content) % tarfile.RECORDSIZE == 0
        expected = {p.name: p.read_bytes() for p in cnn_dir.iterdir()}
        assert _untar(response.content, tmp_path / "out") == expected

    def test_peft_lora_export(self, client, auth, add_adapter, tmp_path) -> None:
        row = add_adapter()

        response = client.get(f"/v1/adapters/{row.id}/content", params={"format": "peft_lora"}, headers=auth)

        assert response.status_code == 200
        files = _untar(response.content, tmp_path / "peft")
        peft_config = json.loads(files["adapter_config.json"])
        assert peft_config["peft_type"] == "LORA"
        # PEFT stores target modules as name suffixes.
        targets = tuple(peft_config["target_modules"])
        assert all(module.endswith(targets) for module in row.config["modules"])
        assert "adapter_model.safetensors" in files

    def test_peft_lora_of_a_non_grft_adapter_is_400(
        self, client, auth, add_adapter, cnn_dir, tmp_path
    ) -> None:
        probe = tmp_path / "probe"
        shutil.copytree(cnn_dir, probe)
        config = json.loads((probe / "adapter_config.json").read_text())
        (probe / "adapter_config.json").write_text(json.dumps({**config, "method": "full"}))
        row = add_adapter(probe)

        response = client.get(f"/v1/adapters/{row.id}/content", params={"format": "peft_lora"}, headers=auth)

        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_adapter"

    def test_unknown_format_is_400(self, client, auth, add_adapter) -> None:
        response = client.get(
            f"/v1/adapters/{add_adapter().id}/content", params={"format": "zip"}, headers=auth
        )
        assert response.status_code == 400

    def test_missing_files_are_404(self, client, auth, add_adapter, settings) -> None:
        row = add_adapter()
        ArtifactStore(settings.artifact_url).delete(f"adapters/{row.id}")
        response = client.get(f"/v1/adapters/{row.id}/content", headers=auth)
        assert response.status_code == 404

    def test_anonymous_is_401(self, client, add_adapter) -> None:
        assert client.get(f"/v1/adapters/{add_adapter().id}/content").status_code == 401

    def test_other_tenant_is_404(self, client, other_auth, add_adapter) -> None:
        assert client.get(f"/v1/adapters/{add_adapter().id}/content", headers=other_auth).status_code == 404


class TestDeleteAdapter:
    def test_removes_row_and_files(self, client, auth, add_adapter, settings) -> None:
        row = add_adapter()
        store = ArtifactStore(settings.artifact_url)
        assert store.exists(f"adapters/{row.id}")

        response = client.delete(f"/v1/adapters/{row.id}", headers=auth)

        assert response.status_code == 200
        assert response.json() == {"id": row.id, "object": "adapter.deleted", "deleted": True}
        assert not store.exists(f"adapters/{row.id}")
        assert client.get(f"/v1/adapters/{row.id}", headers=auth).status_code == 404
        assert client.delete(f"/v1/adapters/{row.id}", headers=auth).status_code == 404

    def test_anonymous_is_401(self, client, add_adapter) -> None:
        assert client.delete(f"/v1/adapters/{add_adapter().id}").status_code == 401

    def test_other_tenant_is_404_and_keeps_files(
        self, client, auth, other_auth, add_adapter, settings
    ) -> None:
        row = add_adapter()
        assert client.delete(f"/v1/adapters/{row.id}", headers=other_auth).status_code == 404
        assert ArtifactStore(settings.artifact_url).exists(f"adapters/{row.id}")
        assert client.get(f"/v1/adapters/{row.id}", headers=auth).status_code == 200


class TestTarStream:
    @pytest.mark.parametrize("sizes", [[0], [1, 511, 512, 513], [3 * 1024 * 1024 + 7]])
    def test_round_trips_any_sizes(self, sizes: list[int]) -> None:
        payloads = {f"dir/f{i}.bin": bytes([i % 251]) * n for i, n in enumerate(sizes)}
        members = [Member(n, len(d), lambda d=d: io.BytesIO(d)) for n, d in payloads.items()]

        archive = b"".join(tar_stream(members, mtime=0))

        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        assert got == payloads
        assert len(archive) % tarfile.RECORDSIZE == 0

    def test_a_file_that_grew_cuts_the_stream(self) -> None:
        members = [Member("x", 3, lambda: io.BytesIO(b"abcdef"))]
        with pytest.raises(OSError, match="changed size"):
            b"".join(tar_stream(members, mtime=0))


class TestPeftWorkdir:
    def test_removed_after_streaming_and_when_never_started(
        self, db, settings, add_adapter, registry
    ) -> None:

        row = add_adapter()
        store = ArtifactStore(settings.artifact_url)

        def workdirs() -> set[Path]:
            return set(Path(tempfile.gettempdir()).glob("grft-peft-*"))

        before = workdirs()
        b"".join(content(store, row, "peft_lora", registry))
        assert workdirs() == before

        stream = content(store, row, "peft_lora", registry)
        assert len(workdirs() - before) == 1
        del stream
        gc.collect()
        assert workdirs() == before
