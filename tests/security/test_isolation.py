"""Tenant isolation, derived from the app's route table: every route that takes an object's id answers
404 to another organization's key — the same answer as for an id that does not exist.

The routes are not listed by hand: the test walks ``app.routes`` and fills each path parameter from
``OBJECTS`` (one object of each kind owned by tenant A, ``acme``). A path parameter the table does not
know fails the test, so a new route cannot ship without saying here how to make its object. Requests
are made with tenant B's (``globex``) key; afterwards tenant A still sees every object, so no write
route (``DELETE``, ``cancel``) reached across either.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from domain.jobs.models import JobCheckpoint
from tests.api.conftest import REDIS_URL
from tests.api.jobs.helpers import create as create_job
from tests.api.test_files import upload
from tests.api.test_inference import b64, png

Auth = dict[str, str]
PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")

# Path parameters that name no tenant object: the route is the same for everyone.
SHARED = {
    "model_id": (
        "base models are global (every organization sees the same); a fine-tuned model id is a tenant "
        "object, refused to other tenants in tests/api/test_models.py"
    ),
}
# Whole routes whose path parameters name no tenant data (exact paths, so a new route is never exempt).
PUBLIC_PATHS = {
    "/dashboard/{name}": "the dashboard's own static files (a fixed list), the same for everyone",
}

# Bodies for routes that validate one before they look the object up (a 400 would hide the 404).
BODIES: dict[str, dict[str, Any]] = {
    "predict": {"inputs": [{"image": b64(png())}]},
}


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Every API route, flattened through included routers (FastAPI ≥ 0.16x keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        candidates: list[Any] = list(app.routes)
    else:
        candidates = [context.original_route for context in iter_route_contexts(app.routes)]
    routes = [r for r in candidates if isinstance(r, APIRoute)]
    assert routes, "no API routes found: the route table walk is broken"
    return routes


def path_params(route: APIRoute) -> list[str]:
    return PARAM.findall(route.path)


@pytest.fixture
def broker() -> Iterator[None]:
    """Creating a job publishes it to the test Redis database: empty it before and after."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()
    client.close()


@pytest.fixture
def objects(client: TestClient, auth: dict[str, str], add, cnn10, db: Session, broker) -> dict[str, str]:
    """One object of each kind owned by tenant A: path parameter name → its id."""
    file = upload(client, auth)
    assert file.status_code == 200, file.text
    job = create_job(client, auth, file.json()["id"])
    assert job.status_code == 200, job.text
    checkpoint_id = "ftckpt-isolation"
    db.add(JobCheckpoint(id=checkpoint_id, job_id=job.json()["id"], step=1, uri="file:///nowhere"))
    db.commit()
    # A public address literal: the URL policy accepts it without a name to resolve.
    webhook = client.post("/v1/webhooks", headers=auth, json={"url": "https://93.184.215.14/hooks"})
    assert webhook.status_code == 200, webhook.text
    return {
        "webhook_id": webhook.json()["id"],
        "file_id": file.json()["id"],
        "job_id": job.json()["id"],
        "adapter_id": add(cnn10).id,
        "checkpoint_id": checkpoint_id,
    }


def _calls(app: FastAPI, objects: dict[str, str]) -> Iterator[tuple[str, str, str, dict[str, Any] | None]]:
    """(method, url, route name, body) of every route with a tenant object in its path."""
    unknown = []
    for route in api_routes(app):
        if route.path in PUBLIC_PATHS:
            continue
        params = path_params(route)
        owned = [p for p in params if p not in SHARED]
        if not owned:
            continue
        missing = [p for p in owned if p not in objects]
        if missing:
            unknown.append(f"{sorted(route.methods)} {route.path}: {', '.join(missing)}")
            continue
        url = route.path
        for p in params:
            url = re.sub(r"{" + p + r"(?::[^}]*)?}", objects[p], url)
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            yield method, url, route.name, BODIES.get(route.name)
    if unknown:
        pytest.fail(
            "routes whose path parameters this test cannot fill (add an object of tenant A to the "
            "`objects` fixture, or to SHARED with the reason it is not a tenant object):\n"
            + "\n".join(unknown)
        )


def test_every_object_route_answers_404_to_another_tenant(
    app: FastAPI, client: TestClient, auth: Auth, other_auth: Auth, objects: dict[str, str]
) -> None:
    calls = list(_calls(app, objects))
    # The table above is what the walk found: at least the routes of every kind of object.
    assert {"file_id", "job_id", "adapter_id"} <= {p for route in api_routes(app) for p in path_params(route)}
    assert len(calls) >= 15

    leaks = []
    for method, url, name, body in calls:
        response = client.request(method, url, headers=other_auth, json=body)
        if response.status_code != 404 or response.json()["error"]["code"] != "not_found":
            leaks.append(f"{method} {url} ({name}): {response.status_code} {response.text[:200]}")
    assert not leaks, "another tenant's object was not a 404:\n" + "\n".join(leaks)

    # Nothing was deleted or cancelled across tenants; the owner still reads every object.
    owner_reads = {
        "file_id": f"/v1/files/{objects['file_id']}",
        "job_id": f"/v1/fine_tuning/jobs/{objects['job_id']}",
        "adapter_id": f"/v1/adapters/{objects['adapter_id']}",
    }
    for url in owner_reads.values():
        response = client.get(url, headers=auth)
        assert response.status_code == 200, (url, response.text)
    job = client.get(owner_reads["job_id"], headers=auth).json()
    assert job["status"] != "cancelled"
    checkpoints = client.get(f"{owner_reads['job_id']}/checkpoints", headers=auth).json()
    assert [c["id"] for c in checkpoints["data"]] == [objects["checkpoint_id"]]


def test_the_owner_reaches_every_read_route(
    app: FastAPI, client: TestClient, auth: dict[str, str], objects: dict[str, str]
) -> None:
    # The 404s above are about the tenant, not a malformed URL: the owner's GETs of the same URLs work.
    gets = [(url, name) for method, url, name, _ in _calls(app, objects) if method == "GET"]
    assert gets
    for url, name in gets:
        response = client.get(url, headers=auth)
        assert response.status_code == 200, (name, url, response.text[:200])


def test_ids_in_bodies_and_cursors_are_scoped_too(
    client: TestClient, other_auth: dict[str, str], objects: dict[str, str]
) -> None:
    # Object ids that travel outside the path: a job's training file, a batch item's adapter, cursors.
    job = create_job(client, other_auth, objects["file_id"])
    assert job.status_code == 404, job.text
    item = {"adapter": objects["adapter_id"], "input": {"image": b64(png())}}
    batch = client.post("/v1/predictions", json={"items": [item]}, headers=other_auth)
    assert batch.status_code == 404, batch.text
    for url, cursor in [
        ("/v1/files", "file_id"),
        ("/v1/fine_tuning/jobs", "job_id"),
        ("/v1/adapters", "adapter_id"),
    ]:
        response = client.get(url, params={"after": objects[cursor]}, headers=other_auth)
        assert response.status_code == 404, (url, response.text)


def test_a_route_the_table_cannot_fill_fails_the_walk(app: FastAPI) -> None:
    @app.get("/v1/widgets/{widget_id}")
    def widget(widget_id: str) -> dict[str, str]:
        return {"id": widget_id}

    known = {"file_id": "f", "job_id": "j", "adapter_id": "a", "checkpoint_id": "c"}
    with pytest.raises(pytest.fail.Exception, match=r"/v1/widgets/\{widget_id\}: widget_id"):
        list(_calls(app, known))
