"""``POST /v1/files`` with a multipart body cut short: refused, nothing stored (whole or absent)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from domain.settings import Settings
from tests.api.test_files import BOUNDARY, CSV, artifact_root, multipart, multipart_headers, tenant_files

WHOLE = multipart(("purpose", None, b"fine-tune"), ("file", "train.csv", CSV))
CLOSING = f"--{BOUNDARY}--\r\n".encode()


class TestTruncatedMultipart:
    @pytest.mark.parametrize(
        ("case", "body"),
        [
            # The file part's bytes all arrived, but the body stops before the closing boundary.
            ("no closing boundary", WHOLE[: -len(CLOSING)]),
            # Cut inside the closing boundary itself.
            ("half a closing boundary", WHOLE[: -len(CLOSING) + 6]),
            # Cut in the middle of the file's bytes.
            ("cut inside the file", WHOLE[: WHOLE.index(CSV) + len(CSV) // 2]),
        ],
    )
    def test_is_refused_and_nothing_is_stored(
        self,
        client: TestClient,
        auth: dict[str, str],
        db: Session,
        settings: Settings,
        case: str,
        body: bytes,
    ) -> None:
        assert not body.endswith(CLOSING)

        response = client.post("/v1/files", headers=multipart_headers(auth), content=body)

        assert response.status_code == 400, case
        error = response.json()["error"]
        assert error["param"] == "file"
        assert "closing boundary" in error["message"]
        assert tenant_files(db, "acme") == []
        assert list((artifact_root(settings) / "tmp").iterdir()) == []
        assert not (artifact_root(settings) / "files").exists()

    def test_streamed_without_a_length_is_refused_too(
        self, client: TestClient, auth: dict[str, str], db: Session, settings: Settings
    ) -> None:
        body = WHOLE[: -len(CLOSING)]

        def chunked() -> Iterator[bytes]:  # no Content-Length: the end of the stream is all there is
            for start in range(0, len(body), 16):
                yield body[start : start + 16]

        response = client.post("/v1/files", headers=multipart_headers(auth), content=chunked())

        assert response.status_code == 400
        assert tenant_files(db, "acme") == []
        assert list((artifact_root(settings) / "tmp").iterdir()) == []

    def test_the_same_body_whole_is_stored(
        self, client: TestClient, auth: dict[str, str], db: Session, settings: Settings
    ) -> None:
        response = client.post("/v1/files", headers=multipart_headers(auth), content=WHOLE)

        assert response.status_code == 200
        assert response.json()["bytes"] == len(CSV)
        assert [f.filename for f in tenant_files(db, "acme")] == ["train.csv"]
