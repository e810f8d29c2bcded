"""Tenants sharing a base model: in-flight admission on the prediction endpoints (429 + Retry-After), texts
cut before the shared batcher tokenises them, and batches formed in turns by tenant."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

from api.inference.service import AdapterRef, InferenceService
from domain.artifacts import ArtifactStore
from grft_core.models.registry import ModelRegistry
from tests.api.test_inference import b64, predict


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def test_a_tenant_over_its_inflight_allowance_gets_429_while_others_proceed(
    client, app, auth, other_auth, add, cnn10, digit_pngs, settings
) -> None:
    mine, theirs = add(cnn10), add(cnn10, tenant="globex")
    inputs = [{"image": b64(digit_pngs[0])}]
    admission = app.state.services.rate_limiter.admission
    # As if the tenant's earlier requests were still queued: its whole allowance is in flight.
    with admission.admitted(mine.tenant_id, settings.inference_tenant_max_cost, 0, 0):
        refused = predict(client, mine.id, inputs, auth)
        other = predict(client, theirs.id, inputs, other_auth)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["param"] == "inflight_cost"
    assert refused.headers["Retry-After"] == "1"
    assert other.status_code == 200, other.text
    assert predict(client, mine.id, inputs, auth).status_code == 200  # allowance given back
    assert admission.inflight(mine.tenant_id) == (0, 0.0)


def test_a_long_text_reaches_the_shared_batcher_cut(client, app, auth, add, bert) -> None:
    row = add(bert)
    words = "goal team coach shares bank profit "
    assert predict(client, row.id, [{"text": words}], auth).status_code == 200  # loads the engine
    inference: InferenceService = app.state.services.inference
    batcher = inference._batchers[row.base_model]
    seen: list[Sequence[Any]] = []
    run = batcher.run

    def recording(items: Sequence[Any], ids: Sequence[str | None]) -> Any:
        seen.append(items)
        return run(items, ids)

    batcher.run = recording
    long = predict(client, row.id, [{"text": words * 2000}], auth)  # 70 KB
    short = predict(client, row.id, [{"text": words * 20}], auth)  # still past the 32 tokens it reads
    assert long.status_code == 200, long.text
    assert long.json() == short.json()
    assert len(seen[0][0]) < len(words) * 100


def test_batches_take_turns_by_tenant(settings, add, cnn10, digit_pngs, tmp_path) -> None:
    service = InferenceService(
        ArtifactStore(settings.artifact_url), ModelRegistry(), tmp_path / "cache", max_batch=2
    )
    rows = {"A": add(cnn10), "B": add(cnn10, tenant="globex")}
    refs = {t: AdapterRef.from_row(row, service.store) for t, row in rows.items()}
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in digit_pngs[:2]]
    batches: list[list[str | None]] = []
    with service.leased(list(refs.values())):
        service.probabilities(images[:1], [refs["A"]])  # loads the engine and its batcher
        batcher = service._batchers[refs["A"].base_model]
        run = batcher.run

        def recording(items: Sequence[Any], ids: Sequence[str | None]) -> Any:
            batches.append(list(ids))
            return run(items, ids)

        batcher.run = recording
        batcher.pause()
        threads: list[threading.Thread] = []
        # A queues three full batches, then B one image.
        for n, (tenant, count) in enumerate([("A", 2), ("A", 2), ("A", 2), ("B", 1)]):
            items, costs = service.prepare(images[:count], [refs[tenant]] * count)
            call = service.probabilities
            kwargs = {"tenant": tenant, "costs": costs}
            threads.append(threading.Thread(target=call, args=(items, [refs[tenant]] * count), kwargs=kwargs))
            threads[-1].start()
            _wait_for(lambda n=n: sum(batcher.waiting().values()) == n + 1, f"request {n} queued")
        batcher.resume()
        for thread in threads:
            thread.join(60)
    service.close()
    b = refs["B"].id
    assert len(batches) == 4
    assert sum(ids.count(refs["A"].id) for ids in batches) == 6
    assert next(i for i, ids in enumerate(batches) if b in ids) <= 1  # in arrival order it would be 3
