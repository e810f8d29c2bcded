"""Corrupt adapter files answer 400 ``invalid_adapter`` (or 409 with a code) on every route that loads
an adapter — the PEFT download, one-adapter and batched predictions, pin and preload — never a 500.

Each case stores a copy of a real trained adapter whose files were damaged on disk (truncated, NaN
deltas, an index of -1 or past the weight's end, …), then calls each route with its owner's key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from domain.adapters.models import Adapter
from domain.artifacts import ArtifactStore
from domain.settings import Settings
from grft_core.adapters.format import CONFIG_NAME, WEIGHTS_NAME
from tests.api.test_inference import b64, png

Corrupt = Callable[[Path], None]


def _tensors(change: Callable[[dict[str, torch.Tensor]], None]) -> Corrupt:
    def corrupt(folder: Path) -> None:
        tensors = load_file(str(folder / WEIGHTS_NAME))
        change(tensors)
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "grft-adapter"})

    return corrupt


def _config(change: Callable[[dict[str, Any]], None]) -> Corrupt:
    def corrupt(folder: Path) -> None:
        doc = json.loads((folder / CONFIG_NAME).read_text())
        change(doc)
        (folder / CONFIG_NAME).write_text(json.dumps(doc))

    return corrupt


def _first(tensors: dict[str, torch.Tensor], suffix: str) -> str:
    return next(n for n in sorted(tensors) if n.endswith(suffix))


def _truncate(folder: Path) -> None:
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) - 7])


def _nan_delta(t: dict[str, torch.Tensor]) -> None:
    name = _first(t, ".grft_delta")
    t[name] = torch.full_like(t[name], float("nan"))


def _index(value: int, position: int) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(t: dict[str, torch.Tensor]) -> None:
        name = _first(t, ".grft_indices")
        t[name] = t[name].clone()
        t[name][position] = value

    return change


def _forget_shapes(doc: dict[str, Any]) -> None:
    doc["modules"] = list(doc["modules"])  # no recorded weight shapes: the range check needs the model


def _other_base(doc: dict[str, Any]) -> None:
    doc["base_fingerprint"] = "0" * 64


def _past_end_unrecorded(folder: Path) -> None:
    _config(_forget_shapes)(folder)
    _tensors(_index(1_000_000, -1))(folder)


# case → (damage, status, error code)
CASES: dict[str, tuple[Corrupt, int, str]] = {
    "truncated": (_truncate, 400, "invalid_adapter"),
    "garbage": (lambda f: (f / WEIGHTS_NAME).write_bytes(b"{not safetensors"), 400, "invalid_adapter"),
    "nan-delta": (_tensors(_nan_delta), 400, "invalid_adapter"),
    "index-minus-one": (_tensors(_index(-1, 0)), 400, "invalid_adapter"),
    "index-past-end": (_tensors(_index(1_000_000, -1)), 400, "invalid_adapter"),
    "index-past-end-unrecorded": (_past_end_unrecorded, 400, "invalid_adapter"),
    "config-not-json": (lambda f: (f / CONFIG_NAME).write_text("{"), 400, "invalid_adapter"),
    "other-base-weights": (_config(_other_base), 409, "fingerprint_mismatch"),
}


def _download_peft(client: TestClient, adapter_id: str, auth: dict[str, str]) -> Any:
    return client.get(f"/v1/adapters/{adapter_id}/content", params={"format": "peft_lora"}, headers=auth)


def _predict(client: TestClient, adapter_id: str, auth: dict[str, str]) -> Any:
    body = {"inputs": [{"image": b64(png())}]}
    return client.post(f"/v1/adapters/{adapter_id}/predict", json=body, headers=auth)


def _predictions(client: TestClient, adapter_id: str, auth: dict[str, str]) -> Any:
    body = {"items": [{"adapter": adapter_id, "input": {"image": b64(png())}}]}
    return client.post("/v1/predictions", json=body, headers=auth)


def _pin(client: TestClient, adapter_id: str, auth: dict[str, str]) -> Any:
    return client.post(f"/v1/inference/adapters/{adapter_id}/pin", headers=auth)


def _preload(client: TestClient, adapter_id: str, auth: dict[str, str]) -> Any:
    return client.post(f"/v1/inference/adapters/{adapter_id}/preload", headers=auth)


ROUTES = {
    "peft-download": _download_peft,
    "predict": _predict,
    "predictions": _predictions,
    "pin": _pin,
    "preload": _preload,
}


@pytest.fixture
def stored(add, settings: Settings, cnn10: Path) -> Callable[[Corrupt], Adapter]:
    """Store a copy of a real adapter, then damage its files where the artifact store keeps them."""

    def make(corrupt: Corrupt) -> Adapter:
        row = add(cnn10)
        folder = ArtifactStore(settings.artifact_url).local_path(f"adapters/{row.id}")
        assert folder is not None
        assert (folder / WEIGHTS_NAME).is_file()
        corrupt(folder)
        return row

    return make


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_adapter_is_refused_with_a_code(client, auth, stored, case: str, route: str) -> None:
    corrupt, status, code = CASES[case]
    row = stored(corrupt)

    response = ROUTES[route](client, row.id, auth)

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    # Refused, not half-loaded: the replica lists nothing of this tenant's as loaded.
    assert client.get("/v1/inference/adapters", headers=auth).json()["data"] == []


def test_an_untouched_copy_serves_on_every_route(client, auth, stored) -> None:
    row = stored(lambda folder: None)
    for route, call in ROUTES.items():
        response = call(client, row.id, auth)
        assert response.status_code == 200, (route, response.text)


def _huge_delta(t: dict[str, torch.Tensor]) -> None:
    for name in [n for n in t if n.endswith(".grft_delta")]:
        t[name] = torch.full_like(t[name], 3e38)


@pytest.mark.parametrize("route", ["predict", "predictions"])
def test_finite_deltas_that_overflow_are_refused_not_500(client, auth, stored, route: str) -> None:
    # Every value is finite, so the file loads; the forward overflows to inf and NaN scores.
    row = stored(_tensors(_huge_delta))

    response = ROUTES[route](client, row.id, auth)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_adapter"
    assert "non-finite scores" in response.json()["error"]["message"]
