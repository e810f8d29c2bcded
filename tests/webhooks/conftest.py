"""Webhook test fixtures: the service fixtures of ``tests.api`` (a real Postgres, two tenants), settings
that let webhooks reach 127.0.0.1 on a queue of their own, and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from domain.settings import Settings
from tests.api.conftest import (  # noqa: F401  (the service fixtures, shared)
    api_key,
    app,
    auth,
    client,
    connection,
    database_url,
    db,
    engine,
    other_auth,
    other_key,
)

# A Redis database of their own: the jobs tests empty theirs (15) around each test.
REDIS_URL = "redis://127.0.0.1:6379/12"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Iterator[Settings]:  # noqa: F811
    queue = f"webhooks-{uuid.uuid4().hex[:8]}"
    yield Settings(
        env="test",
        secret_key="test-secret",
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=REDIS_URL,
        artifact_url=(tmp_path / "artifacts").as_uri(),
        queue=queue,
        webhook_allow_hosts=["127.0.0.1"],
        webhook_timeout_seconds=2.0,
        webhook_backoff_seconds=30.0,
    )
    broker = redis.Redis.from_url(REDIS_URL)
    broker.delete(queue)
    broker.close()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records each request and answers with the next of
    ``answers`` (status, body, extra headers); the last answer repeats."""

    url: str
    requests: list[Received] = field(default_factory=list)
    answers: list[tuple[int, bytes, dict[str, str]]] = field(default_factory=lambda: [(200, b"ok", {})])
    delay_s: float = 0.0

    def answer(self, *statuses: int, body: bytes = b"ok", headers: dict[str, str] | None = None) -> None:
        self.answers = [(status, body, headers or {}) for status in statuses]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            state.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if state.delay_s:
                release.wait(state.delay_s)
            status, text, extra = state.answers[min(len(state.requests), len(state.answers)) - 1]
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/grft"
    try:
        yield state
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
