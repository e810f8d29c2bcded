"""``/readyz`` checks the database, the broker and the artifact store, says which failed, and answers
503 when one does. Every fault is real: nothing listening, a silent server, an unwritable store."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.system.routes import run_checks


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a hung dependency)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def body(client) -> tuple[int, dict[str, str]]:  # type: ignore[no-untyped-def]
    response = client.get("/readyz")
    payload = response.json()
    assert payload["status"] == ("ok" if response.status_code == 200 else "unavailable")
    return response.status_code, payload["checks"]


class TestReadyz:
    def test_all_three_checked_and_ready(self, client) -> None:
        assert body(client) == (200, {"database": "ok", "broker": "ok", "artifact_store": "ok"})

    def test_the_store_probe_leaves_nothing(self, client, settings) -> None:
        assert body(client)[0] == 200
        tmp = Path(settings.artifact_url.removeprefix("file://")) / "tmp"
        assert not list(tmp.iterdir())

    def test_database_down(self, client, settings) -> None:
        settings.database_url = "postgresql+psycopg://grft:pw-secret@127.0.0.1:1/none"
        status, checks = body(client)
        assert status == 503
        assert checks["database"].startswith("error: ")
        assert (checks["broker"], checks["artifact_store"]) == ("ok", "ok")

    def test_broker_down(self, client, settings) -> None:
        settings.broker_url = "redis://:pw-secret@127.0.0.1:1/0"
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["broker"].startswith("error: ")
        assert "pw-secret" not in response.text

    def test_store_unwritable(self, client, settings, tmp_path: Path) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("a file where the store's folder should be")
        settings.artifact_url = (blocker / "artifacts").as_uri()
        status, checks = body(client)
        assert status == 503
        assert checks["artifact_store"].startswith("error: ")
        assert (checks["database"], checks["broker"]) == ("ok", "ok")

    def test_store_read_only_folder(self, client, settings, tmp_path: Path) -> None:
        # The folder exists but its tmp/ is a file: every write fails, as on a read-only mount.
        root = tmp_path / "store"
        root.mkdir()
        (root / "tmp").write_text("not a folder")
        settings.artifact_url = root.as_uri()
        status, checks = body(client)
        assert status == 503
        assert checks["artifact_store"].startswith("error: ")

    def test_hung_broker_times_out(self, client, settings, silent_port: int) -> None:
        settings.broker_url = f"redis://127.0.0.1:{silent_port}/0"
        status, checks = body(client)
        assert status == 503
        assert checks["broker"] == "error: TimeoutError"  # the socket timeout of the ping

    def test_one_deadline_for_all_checks(self, settings, silent_port: int) -> None:
        settings.broker_url = f"redis://127.0.0.1:{silent_port}/0"
        checks = run_checks(settings, timeout_s=0.3)
        assert checks["broker"] == "error: TimeoutError"  # not done by the deadline
