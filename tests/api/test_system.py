"""``/healthz``, ``/readyz`` against the real Postgres and Redis, and the ``/v1/models`` catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from grft_core.models.registry import BUILTIN_MODELS, ModelRegistry


class TestHealthz:
    def test_ok_without_auth(self, client) -> None:
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


class TestReadyz:
    def test_ready_with_real_database_and_redis(self, client) -> None:
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json() == {
            "status": "ok",
            "checks": {"database": "ok", "broker": "ok", "artifact_store": "ok"},
        }

    def test_unreachable_broker_is_503(self, client, settings) -> None:
        settings.broker_url = "redis://:secret@127.0.0.1:1/0"  # nothing listens on port 1

        response = client.get("/readyz")

        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["broker"].startswith("error: ")
        assert "secret" not in response.text  # credentials never leak into a probe answer

    def test_unreachable_database_is_503(self, client, settings) -> None:
        settings.database_url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"].startswith("error: ")
        assert response.json()["checks"]["broker"] == "ok"

    def test_filesystem_broker_ready_when_writable(self, client, settings) -> None:
        settings.broker_url = "filesystem://"
        assert client.get("/readyz").status_code == 200

    def test_filesystem_broker_not_ready_when_unwritable(self, client, settings, tmp_path: Path) -> None:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the broker folder should be")
        settings.broker_url, settings.home = "filesystem://", blocker

        response = client.get("/readyz")

        assert response.status_code == 503
        assert response.json()["checks"]["broker"].startswith("error: ")


class TestModels:
    def test_lists_the_registry_in_openai_shape(self, client, auth, registry: ModelRegistry) -> None:
        response = client.get("/v1/models", headers=auth)

        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "list"
        by_id = {m["id"]: m for m in body["data"]}
        assert set(BUILTIN_MODELS) <= set(by_id)
        tiny = by_id["tiny-cnn"]
        spec = registry.get("tiny-cnn")
        assert tiny["object"] == "model"
        assert tiny["owned_by"] == "grft"
        assert tiny["created"] > 0
        assert (tiny["family"], tiny["modality"]) == ("timm", "image")
        assert (tiny["num_params"], tiny["fingerprint"]) == (spec.num_params, spec.fingerprint)
        assert by_id["tiny-bert"]["modality"] == "text"

    def test_retrieve_one(self, client, auth) -> None:
        body = client.get("/v1/models/tiny-bert", headers=auth).json()
        assert (body["id"], body["family"]) == ("tiny-bert", "transformers")

    def test_unknown_model_is_404(self, client, auth) -> None:
        response = client.get("/v1/models/no-such-model", headers=auth)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"

    @pytest.mark.parametrize("path", ["/v1/models", "/v1/models/tiny-cnn"])
    def test_anonymous_is_401(self, client, path) -> None:
        assert client.get(path).status_code == 401

    def test_every_tenant_sees_the_same_catalogue(self, client, auth, other_auth) -> None:
        assert (
            client.get("/v1/models", headers=auth).json()
            == client.get("/v1/models", headers=other_auth).json()
        )
