"""``POST /v1/predictions`` (items naming their adapters), ``/v1/inference/adapters``, the rate limit and
``/metrics``."""

from __future__ import annotations

import pytest

from api.errors import QuotaExceeded
from api.inference.limits import RateLimiter
from tests.api.test_inference import b64, png, predict


def batch(client, items: list[dict], headers: dict):
    return client.post("/v1/predictions", json={"items": items}, headers=headers)


def test_mixed_adapters_and_bases_answer_as_the_one_adapter_call(
    client, auth, add, cnn10, cnn3, bert, digit_pngs
) -> None:
    a, b, t = add(cnn10), add(cnn3), add(bert)
    texts = ["goal team coach", "shares bank profit"]
    items = [
        {"adapter": a.id, "input": {"image": b64(digit_pngs[0])}},
        {"adapter": t.id, "input": {"text": texts[0]}},
        {"adapter": b.id, "input": {"image": b64(digit_pngs[1])}},
        {"adapter": a.id, "input": {"image": b64(digit_pngs[2])}},
        {"adapter": t.id, "input": {"text": texts[1]}},
    ]

    response = batch(client, items, auth)

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == len(items)
    for item, answer in zip(items, data, strict=True):
        alone = predict(client, item["adapter"], [item["input"]], auth).json()["data"][0]
        assert answer["label"] == alone["label"]
        assert [t["label"] for t in answer["top_k"]] == [t["label"] for t in alone["top_k"]]
        assert [t["score"] for t in answer["top_k"]] == pytest.approx(
            [t["score"] for t in alone["top_k"]], rel=1e-4, abs=1e-6
        )
    assert len(data[2]["top_k"]) == 3  # cnn3's own head
    assert len(data[0]["top_k"]) == 5


def test_unknown_or_foreign_adapter_names_the_item(client, auth, other_auth, add, cnn10) -> None:
    row = add(cnn10)
    ok = {"adapter": row.id, "input": {"image": b64(png())}}
    missing = batch(client, [ok, {"adapter": "nope", "input": {"image": b64(png())}}], auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "items[1].adapter"
    foreign = batch(client, [ok], other_auth)
    assert foreign.status_code == 404
    assert foreign.json()["error"]["param"] == "items[0].adapter"


def test_wrong_modality_and_bad_input_name_the_item(client, auth, add, cnn10, bert) -> None:
    image_row, text_row = add(cnn10), add(bert)
    response = batch(
        client,
        [
            {"adapter": image_row.id, "input": {"image": b64(png())}},
            {"adapter": text_row.id, "input": {"image": b64(png())}},
        ],
        auth,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "items[1].input.image"
    bad = batch(client, [{"adapter": image_row.id, "input": {"image": "not base64!"}}], auth)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "items[0].input.image"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"items": []}, "items"),
        ({"items": [{"adapter": "a", "input": {"text": "x", "image": "aGk="}}]}, "items[0].input"),
        ({"items": [{"input": {"text": "x"}}]}, "items[0].adapter"),
        ({"items": [{"adapter": "a", "input": {"text": "x"}, "extra": 1}]}, "items[0].extra"),
    ],
)
def test_malformed_body_is_400(client, auth, body, param) -> None:
    response = client.post("/v1/predictions", json=body, headers=auth)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_item_limit_and_anonymous(client, auth, add, cnn10, settings) -> None:
    row = add(cnn10)
    settings.predict_max_items = 2
    item = {"adapter": row.id, "input": {"image": b64(png())}}
    response = batch(client, [item] * 3, auth)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "items"
    assert batch(client, [item], {}).status_code == 401


def test_rate_limit_is_per_tenant_with_retry_after(client, auth, other_auth, add, cnn10, settings) -> None:
    row = add(cnn10)
    settings.predict_rate_per_minute = 2
    item = {"adapter": row.id, "input": {"image": b64(png())}}
    assert batch(client, [item], auth).status_code == 200
    assert predict(client, row.id, [{"image": b64(png())}], auth).status_code == 200
    refused = batch(client, [item], auth)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    # Another organization has its own bucket (its request fails on the adapter, not on the limit).
    assert batch(client, [item], other_auth).status_code == 404


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limiter.check("t", 60)  # 60/min: a burst of 60, one more a second
    for _ in range(59):
        limiter.check("t", 60)
    with pytest.raises(QuotaExceeded) as refused:
        limiter.check("t", 60)
    assert refused.value.retry_after == pytest.approx(1.0)
    now[0] = 1.0
    limiter.check("t", 60)
    limiter.check("u", 60)
    limiter.check("t", 0)  # 0 disables the limit


def test_inference_adapters_list_pin_unpin_preload(client, auth, other_auth, add, cnn10, cnn3) -> None:
    a, b = add(cnn10), add(cnn3)
    base = "/v1/inference/adapters"
    assert client.get(base, headers=auth).json()["data"] == []

    preloaded = client.post(f"{base}/{a.id}/preload", headers=auth)
    assert preloaded.status_code == 200, preloaded.text
    assert preloaded.json()["bytes"] > 0
    assert not preloaded.json()["pinned"]
    pinned = client.post(f"{base}/{b.id}/pin", headers=auth).json()
    assert pinned["pinned"]
    assert pinned["base_model"] == "tiny-cnn"

    listing = client.get(base, headers=auth).json()
    assert [x["id"] for x in listing["data"]] == [a.id, b.id]
    assert listing["total_bytes"] == sum(x["bytes"] for x in listing["data"])
    assert client.get(base, headers=other_auth).json()["data"] == []  # loaded, but not theirs
    assert client.post(f"{base}/{a.id}/pin", headers=other_auth).status_code == 404

    assert not client.post(f"{base}/{b.id}/unpin", headers=auth).json()["pinned"]
    assert client.post(f"{base}/{a.id}/unpin", headers=other_auth).status_code == 404  # not theirs
    evicted = client.post(f"{base}/{a.id}/unpin", headers=auth)
    assert evicted.status_code == 200  # loaded: unpinning an unpinned adapter is a no-op
    never_loaded = add(cnn10)
    refused = client.post(f"{base}/{never_loaded.id}/unpin", headers=auth)
    assert refused.status_code == 404
    assert "not loaded" in refused.json()["error"]["message"]
    assert client.post(f"{base}/nope/preload", headers=auth).status_code == 404


def test_metrics_count_requests_batches_and_cache(client, auth, add, cnn10) -> None:
    row = add(cnn10)
    item = {"adapter": row.id, "input": {"image": b64(png())}}
    assert batch(client, [item, item], auth).status_code == 200
    assert batch(client, [item], auth).status_code == 200
    assert batch(client, [{"adapter": "nope", "input": {"text": "x"}}], auth).status_code == 404

    text = client.get("/metrics").text

    assert 'grft_predict_requests_total{endpoint="predictions",status="200"} 2.0' in text
    assert 'grft_predict_requests_total{endpoint="predictions",status="404"} 1.0' in text
    assert 'grft_predict_request_seconds_count{endpoint="predictions"} 3.0' in text
    assert "grft_inference_batch_items_sum 3.0" in text
    assert "grft_adapter_cache_misses_total 1.0" in text
    assert "grft_adapter_cache_hits_total 1.0" in text
    assert "grft_adapter_cache_adapters 1.0" in text
