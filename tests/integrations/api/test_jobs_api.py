"""``POST /v1/fine_tuning/jobs`` with ``integrations``: stored and shown on the job; refused with the
field named when the shape or the MLflow tracking URI is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.jobs.helpers import Auth, create

WANDB = {"type": "wandb", "wandb": {"project": "grft", "name": "run-1", "tags": ["a"]}}


def test_integrations_are_stored_and_shown(client: TestClient, auth: Auth, file_id: str) -> None:
    response = create(client, auth, file_id, integrations=[WANDB])
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["integrations"] == [WANDB]
    again = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()
    assert again["integrations"] == [WANDB]


def test_no_integrations_by_default(client: TestClient, auth: Auth, file_id: str) -> None:
    assert create(client, auth, file_id).json()["integrations"] == []


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        (
            [WANDB, {"type": "mlflow", "mlflow": {"tracking_uri": "file:///etc/x", "experiment_name": "e"}}],
            "integrations.1.mlflow.tracking_uri",
        ),
        (
            [
                {
                    "type": "mlflow",
                    "mlflow": {"tracking_uri": "http://169.254.169.254/", "experiment_name": "e"},
                }
            ],
            "integrations.0.mlflow.tracking_uri",
        ),
        ([{"type": "wandb", "wandb": {"project": "p", "api_key": "k"}}], "integrations.0.wandb.api_key"),
    ],
)
def test_refused_with_the_field_named(
    client: TestClient, auth: Auth, file_id: str, integrations: list[dict[str, Any]], param: str
) -> None:
    response = create(client, auth, file_id, integrations=integrations)
    assert response.status_code in (400, 422), response.text  # OpenAI's 400 where we would say 422
    assert response.json()["error"]["param"] == param
