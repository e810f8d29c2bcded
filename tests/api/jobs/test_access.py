"""``/v1/fine_tuning/jobs/{id}`` and everything under it: refused without a key, hidden from another
tenant."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.jobs.helpers import JOB_ENDPOINTS, Auth


class TestJobEndpointAccess:
    @pytest.mark.parametrize(("method", "path"), JOB_ENDPOINTS)
    def test_anonymous(self, client: TestClient, auth: Auth, job_id: str, method: str, path: str) -> None:
        response = client.request(method, f"/v1/fine_tuning/jobs/{job_id}{path}")

        assert response.status_code == 401

    @pytest.mark.parametrize(("method", "path"), JOB_ENDPOINTS)
    def test_other_tenant(
        self, client: TestClient, auth: Auth, other_auth: Auth, job_id: str, method: str, path: str
    ) -> None:
        response = client.request(method, f"/v1/fine_tuning/jobs/{job_id}{path}", headers=other_auth)

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert (
            client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth).json()["status"] == "validating_files"
        )
