"""``/v1/webhooks``: create (the network policy, the secret shown once), list, retrieve, delete, test
events, the delivery log, and tenant isolation on every route."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from domain.settings import Settings
from domain.webhooks import DELIVER_WEBHOOK
from tests.api.jobs.helpers import published
from tests.webhooks.conftest import REDIS_URL

Auth = dict[str, str]
PUBLIC = "https://hooks.example.com/grft"


def create(client: TestClient, auth: Auth, url: str, **fields: Any) -> Any:
    return client.post("/v1/webhooks", headers=auth, json={"url": url, **fields})


class TestCreate:
    def test_local_receiver_allowed_by_webhook_allow_hosts(self, client: TestClient, auth: Auth) -> None:
        response = create(client, auth, "http://127.0.0.1:9/hook", events=["fine_tuning.job.failed"])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "webhook_endpoint"
        assert body["id"].startswith("wh-")
        assert body["events"] == ["fine_tuning.job.failed"]
        assert body["enabled"] is True
        assert body["secret"].startswith("whsec_")
        assert len(body["secret"]) > len("whsec_") + 30

    def test_secret_is_shown_once(self, client: TestClient, auth: Auth) -> None:
        created = create(client, auth, "http://127.0.0.1:9/hook").json()
        again = client.get(f"/v1/webhooks/{created['id']}", headers=auth).json()
        assert again["secret"] is None
        listed = client.get("/v1/webhooks", headers=auth).json()["data"]
        assert [w["secret"] for w in listed] == [None]

    def test_all_events_by_default(self, client: TestClient, auth: Auth) -> None:
        body = create(client, auth, "http://127.0.0.1:9/hook").json()
        assert body["events"] == [
            "fine_tuning.job.succeeded",
            "fine_tuning.job.failed",
            "fine_tuning.job.cancelled",
        ]

    @pytest.mark.parametrize(
        "url",
        [
            "http://10.0.0.7/hook",
            "http://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "http://127.1/hook",
            "http://192.168.1.1:8080/hook",
            "http://[::ffff:10.0.0.1]/hook",
        ],
    )
    def test_private_target_refused(self, client: TestClient, auth: Auth, url: str) -> None:
        response = create(client, auth, url)
        assert response.status_code in (400, 422), response.text  # 422 rendered as 400 where OpenAI would
        error = response.json()["error"]
        assert error["code"] == "invalid_webhook_url"
        assert error["param"] == "url"
        assert client.get("/v1/webhooks", headers=auth).json()["data"] == []

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("ftp://hooks.example.com/x", "https:// or http://"),
            ("file:///etc/passwd", "https:// or http://"),
            ("https://user:pw@hooks.example.com/x", "credentials"),
            ("https://hooks.example.com/x#frag", "fragment"),
            ("hooks.example.com/x", "https:// or http://"),
        ],
    )
    def test_malformed_url_refused(self, client: TestClient, auth: Auth, url: str, reason: str) -> None:
        response = create(client, auth, url)
        assert response.status_code in (400, 422)
        assert reason in response.json()["error"]["message"]

    def test_loopback_refused_without_allow_list(self, app: Any, auth: Auth, settings: Settings) -> None:
        app.state.settings = settings.model_copy(update={"webhook_allow_hosts": []})
        with TestClient(app) as client:
            response = create(client, auth, "http://127.0.0.1:9/hook")
        assert response.status_code in (400, 422)
        assert "non-public address (127.0.0.1)" in response.json()["error"]["message"]

    def test_dataset_allow_list_does_not_open_webhooks(
        self, app: Any, auth: Auth, settings: Settings
    ) -> None:
        app.state.settings = settings.model_copy(
            update={"webhook_allow_hosts": [], "dataset_allow_hosts": ["127.0.0.1"]}
        )
        with TestClient(app) as client:
            assert create(client, auth, "http://127.0.0.1:9/hook").status_code in (400, 422)

    def test_unknown_event_refused(self, client: TestClient, auth: Auth) -> None:
        response = create(client, auth, "http://127.0.0.1:9/hook", events=["fine_tuning.job.created"])
        assert response.status_code in (400, 422)
        assert response.json()["error"]["param"].startswith("events")


class TestListDelete:
    def test_list_newest_first_and_delete(self, client: TestClient, auth: Auth) -> None:
        ids = [create(client, auth, f"http://127.0.0.1:9/{i}").json()["id"] for i in range(3)]
        page = client.get("/v1/webhooks?limit=2", headers=auth).json()
        assert [w["id"] for w in page["data"]] == ids[::-1][:2]
        assert page["has_more"] is True
        rest = client.get(f"/v1/webhooks?after={page['last_id']}", headers=auth).json()
        assert [w["id"] for w in rest["data"]] == [ids[0]]
        deleted = client.delete(f"/v1/webhooks/{ids[1]}", headers=auth)
        assert deleted.json() == {"id": ids[1], "object": "webhook_endpoint.deleted", "deleted": True}
        assert client.get(f"/v1/webhooks/{ids[1]}", headers=auth).status_code == 404
        assert client.delete(f"/v1/webhooks/{ids[1]}", headers=auth).status_code == 404


class TestTestEvent:
    def test_publishes_a_delivery_and_logs_it(
        self, client: TestClient, auth: Auth, settings: Settings
    ) -> None:
        webhook = create(client, auth, "http://127.0.0.1:9/hook").json()
        response = client.post(f"/v1/webhooks/{webhook['id']}/test", headers=auth)
        assert response.status_code == 200, response.text
        delivery = response.json()
        assert delivery["object"] == "webhook_delivery"
        assert delivery["event_type"] == "webhook.test"
        assert delivery["status"] == "pending"
        assert delivery["attempts"] == 0
        broker = redis.Redis.from_url(REDIS_URL)
        try:
            assert (DELIVER_WEBHOOK, [delivery["id"]]) in published(broker, settings.queue)
        finally:
            broker.close()
        log = client.get(f"/v1/webhooks/{webhook['id']}/deliveries", headers=auth).json()
        assert [d["id"] for d in log["data"]] == [delivery["id"]]
        assert log["data"][0]["attempt_log"] == []


class TestAccess:
    ROUTES = [
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/deliveries"),
        ("POST", "/test"),
    ]

    @pytest.mark.parametrize(("method", "suffix"), ROUTES)
    def test_other_tenant_sees_nothing(
        self, client: TestClient, auth: Auth, other_auth: Auth, method: str, suffix: str
    ) -> None:
        webhook = create(client, auth, "http://127.0.0.1:9/hook").json()
        response = client.request(method, f"/v1/webhooks/{webhook['id']}{suffix}", headers=other_auth)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        # Still there for its owner, and not in the other organization's list.
        assert client.get(f"/v1/webhooks/{webhook['id']}", headers=auth).status_code == 200
        assert client.get("/v1/webhooks", headers=other_auth).json()["data"] == []

    def test_other_tenant_cursor_is_unknown(self, client: TestClient, auth: Auth, other_auth: Auth) -> None:
        webhook = create(client, auth, "http://127.0.0.1:9/hook").json()
        assert client.get(f"/v1/webhooks?after={webhook['id']}", headers=other_auth).status_code == 404

    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/v1/webhooks"), ("POST", "/v1/webhooks"), ("GET", "/v1/webhooks/wh-x/deliveries")],
    )
    def test_anonymous_refused(self, client: TestClient, method: str, path: str) -> None:
        response = client.request(method, path, json={"url": "http://127.0.0.1:9/x"})
        assert response.status_code == 401
