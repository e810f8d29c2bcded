"""``/v1/files``: uploads are whole or absent, capped while they stream, and scoped to their tenant."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.auth.repository import tenant_by_name
from domain.files.models import File
from domain.jobs.models import Job
from domain.settings import Settings

CSV = b"text,label\ngoal match team,sport\nmarket shares profit,business\n"
BOUNDARY = "grft-test-boundary"


def upload(client: TestClient, auth: dict[str, str], data: bytes = CSV, name: str = "train.csv") -> Any:
    return client.post(
        "/v1/files", headers=auth, files={"file": (name, data, "text/csv")}, data={"purpose": "fine-tune"}
    )


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart/form-data body built by hand (to control order and framing)."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def multipart_headers(auth: dict[str, str]) -> dict[str, str]:
    return {**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def artifact_root(settings: Settings) -> Path:
    return Path(settings.artifact_url.removeprefix("file://"))


def tenant_files(db: Session, name: str) -> list[File]:
    tenant = tenant_by_name(db, name)
    assert tenant is not None
    return list(db.scalars(select(File).where(File.tenant_id == tenant.id)))


class TestCreateFile:
    def test_stores_the_upload_and_describes_it(
        self, client: TestClient, auth: dict[str, str], db: Session, settings: Settings
    ) -> None:
        response = upload(client, auth, name="../../etc/train.csv")

        assert response.status_code == 200
        body = response.json()
        assert body["id"].startswith("file-")
        assert body["object"] == "file"
        assert body["bytes"] == len(CSV)
        assert body["filename"] == "train.csv"
        assert body["purpose"] == "fine-tune"
        assert body["status"] == "processed"
        assert isinstance(body["created_at"], int)
        (row,) = tenant_files(db, "acme")
        assert row.id == body["id"]
        assert Path(row.uri.removeprefix("file://")).read_bytes() == CSV

    def test_purpose_may_follow_the_file(self, client: TestClient, auth: dict[str, str]) -> None:
        body = multipart(("file", "a.csv", CSV), ("purpose", None, b"fine-tune"))

        response = client.post("/v1/files", headers=multipart_headers(auth), content=body)

        assert response.status_code == 200
        assert response.json()["bytes"] == len(CSV)

    def test_anonymous(self, client: TestClient) -> None:
        response = upload(client, {})

        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"

    def test_over_the_cap_leaves_nothing(
        self, client: TestClient, auth: dict[str, str], db: Session, settings: Settings
    ) -> None:
        response = upload(client, auth, data=b"x" * (settings.max_upload_bytes + 1))

        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert list((artifact_root(settings) / "tmp").iterdir()) == []
        assert not (artifact_root(settings) / "files").exists()
        assert tenant_files(db, "acme") == []

    def test_over_the_cap_without_a_length_is_cut_while_streaming(
        self, client: TestClient, auth: dict[str, str], db: Session, settings: Settings
    ) -> None:
        body = multipart(("purpose", None, b"fine-tune"), ("file", "big.csv", b"y" * (3 * 1024 * 1024)))

        def chunked() -> Iterator[bytes]:  # no Content-Length: only the streaming cap can stop it
            for start in range(0, len(body), 256 * 1024):
                yield body[start : start + 256 * 1024]

        response = client.post("/v1/files", headers=multipart_headers(auth), content=chunked())

        assert response.status_code == 413
        assert list((artifact_root(settings) / "tmp").iterdir()) == []
        assert tenant_files(db, "acme") == []

    def test_declared_length_over_the_cap_is_refused_before_reading(
        self, client: TestClient, auth: dict[str, str], settings: Settings
    ) -> None:
        response = upload(client, auth, data=b"z" * (settings.max_upload_bytes + 128 * 1024))

        assert response.status_code == 413
        assert not (artifact_root(settings) / "tmp").exists()

    def test_unknown_purpose(self, client: TestClient, auth: dict[str, str], db: Session) -> None:
        response = client.post(
            "/v1/files", headers=auth, files={"file": ("a.csv", CSV)}, data={"purpose": "assistants"}
        )

        assert response.status_code == 400
        assert response.json()["error"]["param"] == "purpose"
        assert tenant_files(db, "acme") == []

    def test_missing_file_part(self, client: TestClient, auth: dict[str, str], settings: Settings) -> None:
        body = multipart(("purpose", None, b"fine-tune"))

        response = client.post("/v1/files", headers=multipart_headers(auth), content=body)

        assert response.status_code == 400
        assert response.json()["error"]["param"] == "file"
        assert list((artifact_root(settings) / "tmp").iterdir()) == []

    def test_two_files_are_refused(self, client: TestClient, auth: dict[str, str]) -> None:
        body = multipart(("purpose", None, b"fine-tune"), ("file", "a.csv", CSV), ("file", "b.csv", CSV))

        response = client.post("/v1/files", headers=multipart_headers(auth), content=body)

        assert response.status_code == 400

    def test_not_multipart(self, client: TestClient, auth: dict[str, str]) -> None:
        response = client.post("/v1/files", headers=auth, json={"purpose": "fine-tune"})

        assert response.status_code == 400
        assert response.json()["error"]["param"] == "file"


class TestListFiles:
    def test_pages_newest_first(self, client: TestClient, auth: dict[str, str]) -> None:
        ids = [upload(client, auth, name=f"{i}.csv").json()["id"] for i in range(3)]

        first = client.get("/v1/files", headers=auth, params={"limit": 2}).json()
        second = client.get("/v1/files", headers=auth, params={"limit": 2, "after": first["last_id"]}).json()

        assert first["object"] == "list"
        assert [f["id"] for f in first["data"]] == ids[::-1][:2]
        assert first["has_more"] is True
        assert first["first_id"] == ids[2]
        assert [f["id"] for f in second["data"]] == [ids[0]]
        assert second["has_more"] is False

    def test_anonymous(self, client: TestClient) -> None:
        assert client.get("/v1/files").status_code == 401

    def test_other_tenant_sees_none(
        self, client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
    ) -> None:
        file_id = upload(client, auth).json()["id"]

        listed = client.get("/v1/files", headers=other_auth).json()
        after = client.get("/v1/files", headers=other_auth, params={"after": file_id})

        assert listed["data"] == []
        assert after.status_code == 404


class TestRetrieveFile:
    def test_retrieves(self, client: TestClient, auth: dict[str, str]) -> None:
        created = upload(client, auth).json()

        response = client.get(f"/v1/files/{created['id']}", headers=auth)

        assert response.status_code == 200
        assert response.json() == created

    def test_anonymous(self, client: TestClient, auth: dict[str, str]) -> None:
        file_id = upload(client, auth).json()["id"]

        assert client.get(f"/v1/files/{file_id}").status_code == 401

    def test_other_tenant(self, client: TestClient, auth: dict[str, str], other_auth: dict[str, str]) -> None:
        file_id = upload(client, auth).json()["id"]

        response = client.get(f"/v1/files/{file_id}", headers=other_auth)

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


class TestDeleteFile:
    def test_deletes_row_and_bytes(self, client: TestClient, auth: dict[str, str], db: Session) -> None:
        file_id = upload(client, auth).json()["id"]
        (row,) = tenant_files(db, "acme")
        path = Path(row.uri.removeprefix("file://"))

        response = client.delete(f"/v1/files/{file_id}", headers=auth)

        assert response.status_code == 200
        assert response.json() == {"id": file_id, "object": "file", "deleted": True}
        assert not path.exists()
        assert client.get(f"/v1/files/{file_id}", headers=auth).status_code == 404

    def test_refused_while_a_job_reads_it(
        self, client: TestClient, auth: dict[str, str], db: Session
    ) -> None:
        file_id = upload(client, auth).json()["id"]
        tenant = tenant_by_name(db, "acme")
        assert tenant is not None
        db.add(Job(id="ftjob-reader", tenant_id=tenant.id, model="tiny-bert", training_file=file_id))
        db.commit()

        response = client.delete(f"/v1/files/{file_id}", headers=auth)

        assert response.status_code == 409
        assert client.get(f"/v1/files/{file_id}", headers=auth).status_code == 200

    def test_anonymous(self, client: TestClient, auth: dict[str, str]) -> None:
        file_id = upload(client, auth).json()["id"]

        assert client.delete(f"/v1/files/{file_id}").status_code == 401

    def test_other_tenant(self, client: TestClient, auth: dict[str, str], other_auth: dict[str, str]) -> None:
        file_id = upload(client, auth).json()["id"]

        assert client.delete(f"/v1/files/{file_id}", headers=other_auth).status_code == 404
        assert client.get(f"/v1/files/{file_id}", headers=auth).status_code == 200


class TestFileContent:
    def test_downloads_the_bytes(self, client: TestClient, auth: dict[str, str]) -> None:
        file_id = upload(client, auth, name="naïve set.csv").json()["id"]

        response = client.get(f"/v1/files/{file_id}/content", headers=auth)

        assert response.status_code == 200
        assert response.content == CSV
        assert "filename*=UTF-8''na%C3%AFve%20set.csv" in response.headers["content-disposition"]

    def test_anonymous(self, client: TestClient, auth: dict[str, str]) -> None:
        file_id = upload(client, auth).json()["id"]

        assert client.get(f"/v1/files/{file_id}/content").status_code == 401

    def test_other_tenant(self, client: TestClient, auth: dict[str, str], other_auth: dict[str, str]) -> None:
        file_id = upload(client, auth).json()["id"]

        assert client.get(f"/v1/files/{file_id}/content", headers=other_auth).status_code == 404
