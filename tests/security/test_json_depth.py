"""JSON nesting: a body of a million brackets is inside the size limit, so the parser's own depth limit
must answer it as a client error, never a 500 or a stack overflow."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

DEEP_ARRAYS = "[" * 200_000 + "]" * 200_000
DEEP_OBJECTS = '{"a":' * 100_000 + "1" + "}" * 100_000


@pytest.mark.parametrize("body", [DEEP_ARRAYS, DEEP_OBJECTS], ids=["arrays", "objects"])
@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/predictions", "/v1/files"])
def test_deeply_nested_json_is_a_client_error(
    client: TestClient, auth: dict[str, str], path: str, body: str
) -> None:
    response = client.post(path, content=body, headers={**auth, "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()
