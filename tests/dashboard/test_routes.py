"""The dashboard's static routes and the CORS setting, on an app built without its lifespan (no
database is touched: these routes and the CORS preflight answer before any session is opened)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.dashboard.routes import ASSETS, STATIC
from api.main import create_app
from domain.settings import Settings


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(home=tmp_path)))


class TestIndex:
    def test_serves_the_page_under_a_strict_policy(self, client: TestClient) -> None:
        response = client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        policy = response.headers["content-security-policy"]
        assert policy.startswith("default-src 'self';")
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert '<script src="/dashboard/app.js" defer></script>' in response.text

    def test_the_page_loads_nothing_from_elsewhere_and_nothing_inline(self) -> None:
        for name in ASSETS:
            text = (STATIC / name).read_text()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
            assert "https://" not in text
        html = (STATIC / "index.html").read_text()
        assert "<script>" not in html
        assert "style=" not in html
        assert " on" + "click=" not in html

    def test_the_key_never_goes_into_a_url(self) -> None:
        script = (STATIC / "app.js").read_text()
        assert "sessionStorage" in script
        assert "localStorage" not in script
        assert "Authorization" in script
        assert "Bearer" in script
        assert "EventSource" not in script  # it cannot send headers: the stream is read with fetch


class TestAssets:
    @pytest.mark.parametrize(
        ("name", "media_type"),
        [
            ("app.js", "text/javascript; charset=utf-8"),
            ("app.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ],
    )
    def test_content_types(self, client: TestClient, name: str, media_type: str) -> None:
        response = client.get(f"/dashboard/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        assert response.content == (STATIC / name).read_bytes()
        assert "default-src 'self'" in response.headers["content-security-policy"]

    @pytest.mark.parametrize("name", ["nope.js", "index.html", "..%2Froutes.py", "%2E%2E%2F__init__.py"])
    def test_unknown_files_are_not_found(self, client: TestClient, name: str) -> None:
        response = client.get(f"/dashboard/{name}")
        assert response.status_code == 404
        assert "def " not in response.text

    def test_not_in_the_api_schema(self, client: TestClient) -> None:
        paths = client.get("/openapi.json").json()["paths"]
        assert "/" not in paths
        assert not any(p.startswith("/dashboard") for p in paths)


class TestCors:
    def test_off_by_default(self, client: TestClient) -> None:
        response = client.get("/healthz", headers={"Origin": "https://ops.example.com"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        preflight = client.options(
            "/v1/files",
            headers={"Origin": "https://ops.example.com", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers

    def test_listed_origins_only(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GRFT_CORS_ORIGINS", '["https://ops.example.com"]')
        client = TestClient(create_app(Settings(home=tmp_path)))
        preflight = client.options(
            "/v1/fine_tuning/jobs",
            headers={
                "Origin": "https://ops.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://ops.example.com"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        simple = client.get("/healthz", headers={"Origin": "https://ops.example.com"})
        assert simple.headers["access-control-allow-origin"] == "https://ops.example.com"
        other = client.get("/healthz", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers
