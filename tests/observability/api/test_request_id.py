"""``X-Request-ID``: kept when safe, generated otherwise, echoed on every response, and carried (with
the tenant) by the request's JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from domain.logging import json_handler

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything logged while the test runs, as the JSON lines ``GRFT_LOG_FORMAT=json`` writes."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def parsed(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


class TestHeader:
    def test_a_plain_client_id_is_echoed(self, client) -> None:
        response = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a:42"})
        assert response.headers["x-request-id"] == "lb-7f3a:42"

    def test_generated_when_absent(self, client) -> None:
        first = client.get("/healthz").headers["x-request-id"]
        second = client.get("/healthz").headers["x-request-id"]
        assert HEX_ID.match(first)
        assert HEX_ID.match(second)
        assert first != second

    @pytest.mark.parametrize("sent", ["a" * 129, "has space", 'quote"s', "semi;colon", "ünïcode"])
    def test_unsafe_ids_are_replaced_not_echoed(self, client, sent: str) -> None:
        response = client.get("/healthz", headers={"X-Request-ID": sent.encode()})
        assert HEX_ID.match(response.headers["x-request-id"])

    def test_on_errors_and_refusals(self, client, auth, settings) -> None:
        assert (
            client.get("/v1/fine_tuning/jobs", headers={"X-Request-ID": "r-401"}).headers["x-request-id"]
            == "r-401"
        )
        missing = client.get("/v1/fine_tuning/jobs/ftjob-nope", headers={**auth, "X-Request-ID": "r-404"})
        assert (missing.status_code, missing.headers["x-request-id"]) == (404, "r-404")
        big = b"x" * (settings.max_json_body_bytes + 1)
        refused = client.post(
            "/v1/fine_tuning/jobs",
            content=big,
            headers={"content-type": "application/json", "X-Request-ID": "r-413"},
        )
        assert (refused.status_code, refused.headers["x-request-id"]) == (413, "r-413")

    def test_an_unhandled_error_answers_500_with_the_id(self, app) -> None:
        @app.get("/boom-for-test")
        def boom() -> None:
            raise RuntimeError("kaboom")

        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/boom-for-test", headers={"X-Request-ID": "r-500"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "r-500"
        body = response.json()["error"]
        assert body["code"] == "internal_error"
        assert "r-500" in body["message"]
        assert "kaboom" not in response.text


class TestJsonLogs:
    def test_access_line_carries_request_and_tenant(self, client, auth, db, log_lines) -> None:
        response = client.get("/v1/fine_tuning/jobs", headers={**auth, "X-Request-ID": "trace-abc"})
        assert response.status_code == 200

        from domain.auth.models import Tenant

        tenant_id = db.query(Tenant).filter_by(name="acme").one().id
        lines = [entry for entry in parsed(log_lines) if entry.get("request_id") == "trace-abc"]
        access = [entry for entry in lines if entry["logger"] == "grft.access"]
        assert len(access) == 1, lines
        line = access[0]
        assert set(line) >= {"time", "level", "logger", "message", "request_id", "tenant_id", "job_id"}
        assert (line["level"], line["method"], line["route"], line["status"]) == (
            "info",
            "GET",
            "/v1/fine_tuning/jobs",
            200,
        )
        assert line["tenant_id"] == tenant_id
        assert line["message"] == "GET /v1/fine_tuning/jobs 200"

    def test_anonymous_request_has_no_tenant(self, client, log_lines) -> None:
        client.get("/v1/fine_tuning/jobs", headers={"X-Request-ID": "anon-1"})
        access = [e for e in parsed(log_lines) if e.get("request_id") == "anon-1"]
        assert access
        assert access[0]["tenant_id"] is None
        assert access[0]["status"] == 401

    def test_every_line_is_one_json_object(self, client, auth, log_lines) -> None:
        for _ in range(3):
            client.get("/v1/fine_tuning/jobs", headers=auth)
        text = log_lines.getvalue()
        assert text.count("\n") == len(parsed(log_lines)) >= 3
