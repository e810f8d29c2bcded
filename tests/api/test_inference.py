"""``POST /v1/adapters/{id}/predict`` and the process-wide ``InferenceService`` behind it.

Every answer is compared with what the library gives for the same bytes: ``load_adapted`` on the
adapter folder, then ``predict_proba`` (equal to rounding: the service runs the batched engine). The
service shares one base model between adapters, so the tests also count base loads and interleave
adapters on the same base.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from api.inference.service import AdapterRef, InferenceService
from domain.adapters.models import Adapter
from domain.artifacts import ArtifactStore
from grft_core.method.evaluation import predict_proba
from grft_core.models.registry import ModelRegistry
from grft_core.pipeline import load_adapted
from grft_core.serving import BatchRecord

TEXT_CLASSES = ["sport", "business", "arts"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(size: int = 32, colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, "PNG")
    return out.getvalue()


def library_probs(folder: Path, registry: ModelRegistry, items: list) -> torch.Tensor:
    model, preprocessor, _ = load_adapted(folder, registry)
    return predict_proba(model, items, preprocessor, torch.device("cpu"))


def assert_matches_library(data: list[dict], probs: torch.Tensor, labels: list[str]) -> None:
    """Same labels in the same order, probabilities equal to rounding.

    Not to the last bit: the serving engine adds each item's delta rows to the shared base output
    instead of running a merged or unmerged copy, and applies heads as one batched matmul.
    """
    assert len(data) == probs.shape[0]
    for answer, row in zip(data, probs, strict=True):
        assert answer["label"] == labels[int(row.argmax())]
        assert answer["top_k"][0]["label"] == answer["label"]
        assert answer["score"] == pytest.approx(float(row.max()), rel=1e-4, abs=1e-6)
        expected = sorted(((float(p), labels[i]) for i, p in enumerate(row)), key=lambda t: -t[0])[:5]
        assert [t["label"] for t in answer["top_k"]] == [lb for _, lb in expected]
        assert [t["score"] for t in answer["top_k"]] == pytest.approx(
            [p for p, _ in expected], rel=1e-4, abs=1e-6
        )


def predict(client, adapter_id: str, inputs: list[dict], headers: dict):
    return client.post(f"/v1/adapters/{adapter_id}/predict", json={"inputs": inputs}, headers=headers)


class TestPredictJson:
    def test_images_match_the_library_in_order(self, client, auth, add, cnn10, registry, digit_pngs) -> None:
        row = add(cnn10)

        response = predict(client, row.id, [{"image": b64(p)} for p in digit_pngs], auth)

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "list"
        assert all(len(item["top_k"]) == 5 for item in body["data"])
        items = [Image.open(io.BytesIO(p)) for p in digit_pngs]
        assert_matches_library(body["data"], library_probs(cnn10, registry, items), row.config["labels"])

    def test_probabilities_sum_to_one(self, client, auth, add, cnn3, registry, digit_pngs) -> None:
        row = add(cnn3)
        data = predict(client, row.id, [{"image": b64(p)} for p in digit_pngs], auth).json()["data"]
        for answer in data:
            assert len(answer["top_k"]) == 3  # every label of a 3-class head
            assert sum(t["score"] for t in answer["top_k"]) == pytest.approx(1.0, abs=1e-5)
        items = [Image.open(io.BytesIO(p)) for p in digit_pngs]
        assert_matches_library(data, library_probs(cnn3, registry, items), ["1", "4", "7"])

    def test_texts_match_the_library(self, client, auth, add, bert, registry) -> None:
        row = add(bert)
        texts = ["goal team coach", "shares bank profit trade", "film award", "the league film market"]

        response = predict(client, row.id, [{"text": t} for t in texts], auth)

        assert response.status_code == 200, response.text
        labels = json.loads((bert / "adapter_config.json").read_text())["labels"]
        assert_matches_library(response.json()["data"], library_probs(bert, registry, texts), labels)

    def test_data_url_is_accepted(self, client, auth, add, cnn10, digit_pngs) -> None:
        row = add(cnn10)
        plain = predict(client, row.id, [{"image": b64(digit_pngs[0])}], auth).json()
        data_url = predict(client, row.id, [{"image": "data:image/png;base64," + b64(digit_pngs[0])}], auth)
        assert data_url.json() == plain

    def test_too_many_items_is_400(self, client, auth, add, cnn10, settings) -> None:
        settings.predict_max_items = 2
        response = predict(client, add(cnn10).id, [{"image": b64(png())}] * 3, auth)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "inputs"

    def test_bad_base64_names_the_input(self, client, auth, add, cnn10) -> None:
        response = predict(client, add(cnn10).id, [{"image": b64(png())}, {"image": "not base64!"}], auth)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "inputs[1].image"
        assert "inputs[1]" in error["message"]

    def test_undecodable_image_is_400(self, client, auth, add, cnn10) -> None:
        response = predict(client, add(cnn10).id, [{"image": b64(b"GIF89a but not really")}], auth)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "inputs[0].image"

    def test_decompression_bomb_is_400(self, client, auth, add, cnn10, monkeypatch) -> None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 32x32 = 1,024 pixels: "a bomb"
        response = predict(client, add(cnn10).id, [{"image": b64(png(32))}], auth)
        assert response.status_code == 400
        assert "decompression bomb" in response.json()["error"]["message"]

    def test_oversized_input_is_413(self, client, auth, add, cnn10, settings) -> None:
        settings.predict_max_input_bytes = 64
        response = predict(client, add(cnn10).id, [{"image": b64(png())}], auth)
        assert response.status_code == 413
        assert response.json()["error"]["param"] == "inputs[0].image"

    def test_oversized_body_is_413(self, client, auth, add, cnn10, settings) -> None:
        settings.predict_max_items, settings.predict_max_input_bytes = 1, 64
        response = predict(client, add(cnn10).id, [{"text": "x" * 100_000}], auth)
        assert response.status_code == 413

    def test_text_to_an_image_adapter_is_400(self, client, auth, add, cnn10) -> None:
        response = predict(client, add(cnn10).id, [{"image": b64(png())}, {"text": "hello"}], auth)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "inputs[1].text"

    def test_image_to_a_text_adapter_is_400(self, client, auth, add, bert) -> None:
        response = predict(client, add(bert).id, [{"image": b64(png())}], auth)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "inputs[0].image"

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"inputs": []}, "inputs"),
            ({"inputs": [{"image": "aGk=", "text": "both"}]}, "inputs[0]"),
            ({"inputs": [{"audio": "aGk="}]}, "inputs[0].audio"),
            ({"inputs": [{"text": "ok"}], "extra": 1}, "extra"),
        ],
    )
    def test_malformed_body_is_400(self, client, auth, add, cnn10, body, param) -> None:
        response = client.post(f"/v1/adapters/{add(cnn10).id}/predict", json=body, headers=auth)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param

    def test_anonymous_is_401(self, client, add, cnn10) -> None:
        response = predict(client, add(cnn10).id, [{"image": b64(png())}], {})
        assert response.status_code == 401

    def test_anonymous_is_refused_before_the_body_is_read(self, client, add, cnn10, settings) -> None:
        settings.predict_max_items, settings.predict_max_input_bytes = 1, 64
        response = predict(client, add(cnn10).id, [{"text": "x" * 100_000}], {})
        # 413 from the declared length, before authentication: the body was never read (issue 10).
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert "GRFT_PREDICT_MAX_ITEMS" in response.json()["error"]["message"]

    def test_other_tenant_is_404(self, client, other_auth, add, cnn10) -> None:
        response = predict(client, add(cnn10).id, [{"image": b64(png())}], other_auth)
        assert response.status_code == 404

    def test_fingerprint_mismatch_is_409(self, client, auth, add, cnn10, tmp_path) -> None:
        forged = tmp_path / "forged"
        shutil.copytree(cnn10, forged)
        config = json.loads((forged / "adapter_config.json").read_text())
        (forged / "adapter_config.json").write_text(json.dumps({**config, "base_fingerprint": "sha256:0"}))
        response = predict(client, add(forged).id, [{"image": b64(png())}], auth)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "fingerprint_mismatch"


class TestPredictMultipart:
    def test_files_answer_like_json(self, client, auth, add, cnn10, digit_pngs) -> None:
        row = add(cnn10)
        files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(digit_pngs[:3])]

        response = client.post(f"/v1/adapters/{row.id}/predict", files=files, headers=auth)

        assert response.status_code == 200, response.text
        as_json = predict(client, row.id, [{"image": b64(p)} for p in digit_pngs[:3]], auth)
        assert response.json() == as_json.json()

    def test_too_many_files_is_400(self, client, auth, add, cnn10, settings) -> None:
        settings.predict_max_items = 1
        files = [("files", (f"{i}.png", png(), "image/png")) for i in range(4)]
        response = client.post(f"/v1/adapters/{add(cnn10).id}/predict", files=files, headers=auth)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "files"

    def test_bad_image_names_the_file(self, client, auth, add, cnn10) -> None:
        files = [("files", ("a.png", png(), "image/png")), ("files", ("b.png", b"nope", "image/png"))]
        response = client.post(f"/v1/adapters/{add(cnn10).id}/predict", files=files, headers=auth)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "files[1]"

    def test_other_fields_are_400(self, client, auth, add, cnn10) -> None:
        response = client.post(
            f"/v1/adapters/{add(cnn10).id}/predict",
            files=[("files", ("a.png", png(), "image/png"))],
            data={"note": "hi"},
            headers=auth,
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "note"

    def test_anonymous_is_401(self, client, add, cnn10) -> None:
        files = [("files", ("a.png", png(), "image/png"))]
        assert client.post(f"/v1/adapters/{add(cnn10).id}/predict", files=files).status_code == 401


class TestInferenceService:
    @pytest.fixture
    def service(self, settings, tmp_path) -> Iterator[InferenceService]:
        service = InferenceService(ArtifactStore(settings.artifact_url), ModelRegistry(), tmp_path / "cache")
        yield service
        service.close()

    def _ref(self, row: Adapter, service: InferenceService) -> AdapterRef:
        return AdapterRef.from_row(row, service.store)

    def _probs(self, service: InferenceService, row: Adapter, items: list) -> torch.Tensor:
        ref = self._ref(row, service)
        with service.leased([ref]):
            return torch.stack(service.probabilities(items, [ref] * len(items)))

    def test_base_loaded_once_for_two_adapters(
        self, add, cnn10, cnn3, digit_pngs, monkeypatch, service
    ) -> None:
        calls: list[str] = []
        original = ModelRegistry.load

        def counting(self, name, num_labels, **kwargs):
            calls.append(name)
            return original(self, name, num_labels, **kwargs)

        monkeypatch.setattr(ModelRegistry, "load", counting)
        a, b = add(cnn10), add(cnn3)
        items = [Image.open(io.BytesIO(p)) for p in digit_pngs]

        first = self._probs(service, a, items)
        other = self._probs(service, b, items)
        again = self._probs(service, a, items)

        assert calls == ["tiny-cnn"]
        assert service.base_loads == {"tiny-cnn": 1}
        assert first.shape == (6, 10)
        assert other.shape == (6, 3)
        torch.testing.assert_close(again, first, rtol=0, atol=0)  # the base came back untouched
        assert {s.id for s in service.engine("tiny-cnn").adapters()} == {a.id, b.id}

    def test_concurrent_requests_share_forward_passes_and_do_not_mix(
        self, settings, add, cnn10, cnn3, digit_pngs, tmp_path
    ) -> None:
        records: list[BatchRecord] = []
        service = InferenceService(
            ArtifactStore(settings.artifact_url),
            ModelRegistry(),
            tmp_path / "cache",
            max_wait_s=0.3,
            on_batch=records.append,
        )
        refs = [self._ref(add(folder), service) for folder in (cnn10, cnn3)]
        items = [Image.open(io.BytesIO(p)).convert("RGB") for p in digit_pngs]
        with service.leased(refs):
            expected = [torch.stack(service.probabilities(items, [r] * len(items))) for r in refs]
            records.clear()
            with ThreadPoolExecutor(max_workers=6) as pool:
                futures = [
                    (i % 2, pool.submit(service.probabilities, items, [refs[i % 2]] * len(items)))
                    for i in range(6)
                ]
                for which, future in futures:
                    torch.testing.assert_close(
                        torch.stack(future.result()), expected[which], rtol=1e-5, atol=1e-6
                    )
        service.close()
        assert sum(r.requests for r in records) == 6
        assert max(r.requests for r in records) >= 2  # requests for two adapters shared a forward pass

    def test_lru_evicts_and_removes_cached_files(self, settings, add, cnn10, cnn3, tmp_path) -> None:
        service = InferenceService(
            ArtifactStore(settings.artifact_url), ModelRegistry(), tmp_path / "cache", max_adapters=1
        )
        a, b = add(cnn10), add(cnn3)
        service.preload(self._ref(a, service))
        assert (service.cache_dir / a.id / "adapter_model.safetensors").is_file()

        service.preload(self._ref(b, service))

        assert service.cached_ids() == [b.id]
        assert not (service.cache_dir / a.id).exists()
        assert a.id not in service.engine("tiny-cnn")
        assert service.base_loads == {"tiny-cnn": 1}
        assert service.cache.stats.evictions == 1
        service.close()

    def test_delete_through_the_api_evicts(self, client, auth, add, cnn10, app) -> None:
        row = add(cnn10)
        assert predict(client, row.id, [{"image": b64(png())}], auth).status_code == 200
        service: InferenceService = app.state.services.inference
        assert service.cached_ids() == [row.id]

        assert client.delete(f"/v1/adapters/{row.id}", headers=auth).status_code == 200

        assert service.cached_ids() == []
        assert not (service.cache_dir / row.id).exists()
        assert predict(client, row.id, [{"image": b64(png())}], auth).status_code == 404

    def test_non_grft_adapter_is_refused(self, client, auth, add, cnn10, tmp_path, app) -> None:
        probe = tmp_path / "full"
        shutil.copytree(cnn10, probe)
        config = json.loads((probe / "adapter_config.json").read_text())
        (probe / "adapter_config.json").write_text(json.dumps({**config, "method": "full"}))
        row = add(probe)
        response = predict(client, row.id, [{"image": b64(png())}], auth)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_adapter"
        service: InferenceService = app.state.services.inference
        assert service.cached_ids() == []
        assert not (service.cache_dir / row.id).exists()  # a refused adapter's files do not linger


class TestOpenApi:
    def test_predict_documents_both_bodies_and_its_errors(self, app) -> None:
        operation = app.openapi()["paths"]["/v1/adapters/{adapter_id}/predict"]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        assert (
            content["application/json"]["schema"]["properties"]["inputs"]["items"]["additionalProperties"]
            is False
        )
        assert {"401", "404", "413", "400"} <= set(operation["responses"])
