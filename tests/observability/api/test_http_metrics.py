"""Every HTTP route is counted and timed under its template, never its raw path."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from tests.observability.api.helpers import samples, value

FILLER = "obs-probe-id"


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", FILLER, path)


def api_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template as served) of every API route, through included routers."""
    return [
        (method, str(context.path))
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        for method in sorted(context.original_route.methods - {"HEAD"})
    ]


class TestEveryRoute:
    def test_each_route_is_counted_under_its_template(self, app, client) -> None:
        routes = api_routes(app)
        assert len(routes) > 20  # the whole API, not a few system routes
        statuses = {}
        for method, template in routes:
            # Anonymous calls: each reaches its route (and mostly stops at authentication) quickly.
            statuses[method, template] = client.request(method, concrete(template)).status_code

        counted = {
            (labels["method"], labels["route"]): labels["status"]
            for labels, _ in samples(client, "grft_http_requests_total")
        }
        timed = {
            (labels["method"], labels["route"])
            for labels, _ in samples(client, "grft_http_request_seconds_count")
        }
        for method, template in routes:
            assert (method, template) in counted, f"{method} {template} is not counted"
            assert counted[method, template] == str(statuses[method, template]), (method, template)
            assert (method, template) in timed, f"{method} {template} is not timed"
        assert not [route for _, route in counted if FILLER in route]  # no raw paths

    def test_status_code_and_class(self, client, auth) -> None:
        assert client.get("/v1/fine_tuning/jobs", headers=auth).status_code == 200
        assert client.get("/v1/fine_tuning/jobs").status_code == 401
        assert client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=auth).status_code == 404

        jobs = {"method": "GET", "route": "/v1/fine_tuning/jobs"}
        assert value(client, "grft_http_requests_total", **jobs, status="200") == 1
        assert value(client, "grft_http_requests_total", **jobs, status="401") == 1
        one = {"method": "GET", "route": "/v1/fine_tuning/jobs/{job_id}"}
        assert value(client, "grft_http_requests_total", **one, status="404") == 1
        assert value(client, "grft_http_request_seconds_count", **jobs, status_class="2xx") == 1
        assert value(client, "grft_http_request_seconds_count", **jobs, status_class="4xx") == 1

    def test_unknown_paths_share_one_series(self, client) -> None:
        for path in ("/no/such/thing", "/wp-admin.php", "/v1/nope/123"):
            assert client.get(path).status_code == 404
        assert value(client, "grft_http_requests_total", method="GET", route="<unmatched>", status="404") == 3
        routes = {labels["route"] for labels, _ in samples(client, "grft_http_requests_total")}
        assert not routes & {"/no/such/thing", "/wp-admin.php", "/v1/nope/123"}

    def test_body_limit_refusals_are_counted(self, client, settings) -> None:
        big = b"x" * (settings.max_json_body_bytes + 1)
        response = client.post(
            "/v1/fine_tuning/jobs", content=big, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        counted = samples(client, "grft_http_requests_total")
        assert any(labels["status"] == "413" and labels["method"] == "POST" for labels, _ in counted)

    def test_process_memory_is_exported(self, client) -> None:
        assert value(client, "process_resident_memory_bytes") > 0
