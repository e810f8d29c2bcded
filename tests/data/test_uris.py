"""Where data comes from: missing or unknown local files and schemes, http(s), s3 and fsspec URIs served
for real on the loopback interface."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from grft_core.data import fetch
from grft_core.data.loading import load_dataset
from tests.data.helpers import COLORS, TEXT_ROWS, image_folder, png_bytes, rejected, write_csv


class TestFileErrors:
    def test_missing_file(self, tmp_path):
        error = rejected(str(tmp_path / "nope.csv"))
        assert "not found" in error.message
        assert error.param == str(tmp_path / "nope.csv")

    def test_empty_file(self, tmp_path):
        (tmp_path / "e.csv").write_bytes(b"")
        error = rejected(str(tmp_path / "e.csv"))
        assert "empty" in error.message
        assert error.param == str(tmp_path / "e.csv")

    def test_unknown_extension(self, tmp_path):
        (tmp_path / "d.xlsx").write_bytes(b"x")
        error = rejected(str(tmp_path / "d.xlsx"))
        assert "unknown dataset format" in error.message
        assert error.param == str(tmp_path / "d.xlsx")

    def test_unreachable_s3_endpoint(self, monkeypatch):
        # A closed loopback port as the endpoint: the s3 backend's own error must come back as a
        # DatasetRejected naming the URI (no credential lookups leave the machine).
        import fsspec.config

        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setitem(
            fsspec.config.conf,
            "s3",
            {
                "endpoint_url": "http://127.0.0.1:9",
                "key": "test",
                "secret": "test",
                "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
            },
        )
        error = rejected("s3://bucket/train.csv")
        assert "cannot download s3://bucket/train.csv" in error.message or "not found" in error.message
        assert error.param == "s3://bucket/train.csv"

    def test_unknown_scheme(self):
        assert "unsupported URI scheme" in rejected("nosuchproto://x/y.csv").message


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(
    root: Path, context: ssl.SSLContext | None = None
) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server, thread = _serve(root)
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class TestRemote:
    def test_http_csv_and_zip(self, http_root, tmp_path):
        root, base = http_root
        write_csv(root / "t.csv", TEXT_ROWS)
        shutil.make_archive(str(root / "pets"), "zip", image_folder(tmp_path / "pets", {"cat": 1, "dog": 2}))
        text = load_dataset(f"{base}/t.csv?token=abc")
        assert text.classes == ["neg", "pos"]
        assert text.source == f"{base}/t.csv?token=abc"
        assert Counter(load_dataset(f"{base}/pets.zip").labels) == {0: 1, 1: 2}

    def test_http_not_found_and_redirect(self, http_root):
        root, base = http_root
        (root / "folder").mkdir()
        port = base.rsplit(":", 1)[1]
        error = rejected(f"{base}/missing.csv")
        assert "not found" in error.message
        # Named by scheme, host and path: the port (and any query) is not echoed back.
        assert error.param == "http://127.0.0.1/missing.csv"
        assert port not in error.message
        # The server answers a folder without its trailing slash with a 301, which is refused.
        redirect = rejected(f"{base}/folder")
        assert "HTTP 301" in redirect.message
        assert "redirects are not followed" in redirect.message
        assert port not in redirect.message

    def test_closed_port_is_one_class_of_failure(self, http_root):
        root, base = http_root
        # A loopback port nothing listens on: "could not connect", with neither the port nor the
        # operating system's words.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        error = rejected(f"http://127.0.0.1:{closed}/t.csv?token=abc")
        assert error.message == "cannot download http://127.0.0.1/t.csv: could not connect"
        assert str(closed) not in error.message
        assert "token" not in error.message

    def test_url_path_cannot_name_a_file_outside_the_work_folder(self):
        assert fetch._local_name("/a/..") == "download"
        assert fetch._local_name("/") == "download"
        assert fetch._local_name("/x/t.csv") == "t.csv"

    def test_http_size_limit(self, http_root, monkeypatch):
        root, base = http_root
        write_csv(root / "t.csv", TEXT_ROWS * 10)
        monkeypatch.setattr(fetch, "MAX_DATASET_BYTES", 64)
        assert "more than the limit" in rejected(f"{base}/t.csv").message

    def test_https(self, tmp_path, monkeypatch):
        if shutil.which("openssl") is None:
            pytest.fail("the https test needs the openssl command to make a certificate")
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        subprocess.run(
            [*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60
        )
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        root = tmp_path / "www"
        root.mkdir()
        write_csv(root / "t.csv", TEXT_ROWS)
        server, thread = _serve(root, context)
        try:
            loaded = load_dataset(f"https://127.0.0.1:{server.server_address[1]}/t.csv")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        assert loaded.items == [row[0] for row in TEXT_ROWS]

    def test_fsspec_memory_folder_and_file(self, tmp_path):
        fs = fsspec.filesystem("memory")
        try:
            for name in ("cat", "dog"):
                for i in range(2):
                    fs.pipe(f"/grft-test/pets/{name}/{i}.png", png_bytes(COLORS[name]))
            fs.pipe("/grft-test/t.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
            loaded = load_dataset("memory://grft-test/pets")
            assert loaded.classes == ["cat", "dog"]
            assert len(loaded) == 4
            assert load_dataset("memory://grft-test/t.jsonl").items == ["a", "b"]
            assert "not found" in rejected("memory://grft-test/none.csv").message
        finally:
            fs.rm("/grft-test", recursive=True)
