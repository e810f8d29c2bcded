"""The https fetch against a real TLS server on loopback: the connection goes to the address the policy
checked (a resolver that now answers otherwise is never asked again), TLS checks the URL's host name,
redirects are refused, and no error message carries the port or anything the server sent.

Loopback is not public: every test that goes through the policy permits 127.0.0.1 explicitly
(``dataset_allow_hosts``), as an operator would for an internal host.
"""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from domain.dataset_uris import check_dataset_uri
from domain.settings import Settings
from grft_core.data.fetch import fetch_https
from grft_core.data.loading import load_dataset, load_train_val
from grft_core.errors import DatasetRejected
from worker.datasets import remote_copy

HOST = "data.test"
CSV = b"text,label\ngood movie,pos\nbad movie,neg\nfine film,pos\nawful film,neg\n"
SECRET = b"AWS_SECRET_ACCESS_KEY=hunter2-very-secret\nAWS_SESSION_TOKEN=tok-secret\n"


# --- a CA and a certificate for data.test, made here ------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a CA, and a server certificate it signed for ``data.test`` only."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("grft test CA"))
        .issuer_name(_name("grft test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(HOST))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


# --- the server -------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the server saw: request lines, Host headers and the TLS SNI names."""

    paths: list[str] = field(default_factory=list)
    hosts: list[str | None] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: Seen

    def do_GET(self) -> None:
        self.seen.paths.append(self.path)
        self.seen.hosts.append(self.headers.get("Host"))
        route = self.path.split("?", 1)[0]
        if route == "/t.csv":
            self._send(200, CSV)
        elif route == "/env.csv":  # what an internal endpoint could hold: a secret, not a dataset
            self._send(200, SECRET)
        elif route == "/redirect.csv":
            self.send_response(302, "Found <secret-reason>")
            self.send_header("Location", "https://169.254.169.254/latest/meta-data/iam/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/fail.csv":
            self.send_response(500, "<secret-reason AWS_SECRET_ACCESS_KEY>")
            self.send_header("Content-Length", str(len(SECRET)))
            self.end_headers()
            self.wfile.write(SECRET)
        elif route == "/short.csv":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(CSV) + 100))
            self.end_headers()
            self.wfile.write(CSV)
            self.close_connection = True
        elif route == "/slow.csv":
            time.sleep(2)
            self._send(200, CSV)
        elif route == "/drip.csv":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(40):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
        else:
            self._send(404, b"<secret 404 page>")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Server:
    port: int
    seen: Seen
    ca: Path

    def url(self, path: str, host: str = HOST) -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Server]:
    ca, cert, key = make_tls(tmp_path)
    seen = Seen()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def record_sni(_sock: Any, name: str | None, _ctx: Any) -> None:
        seen.sni.append(name)

    context.sni_callback = record_sni
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(server.server_address[1], seen, ca)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def client_tls(tls_server: Server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_server.ca))


class Rebinding:
    """A resolver (``socket.getaddrinfo``'s shape) whose first answer for a name is ``first`` and every
    later one ``then``: the DNS-rebinding attack, in one object."""

    def __init__(self, first: str, then: str) -> None:
        self.first, self.then, self.calls = first, then, []

    def __call__(self, host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        address = self.first if len(self.calls) == 1 else self.then
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]


@pytest.fixture
def policy(tmp_path: Path) -> Settings:
    return Settings(env="test", secret_key="x", home=tmp_path / "home", dataset_allow_hosts=["127.0.0.1"])


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any name lookup in this process from here on is recorded and answered with the metadata address."""
    asked: list[str] = []

    def metadata(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    monkeypatch.setattr(socket, "getaddrinfo", metadata)
    return asked


def assert_clean(error: DatasetRejected, server: Server) -> None:
    """No port, no server words, no secret in a tenant-visible message or param."""
    for text in (error.message, error.param or ""):
        assert str(server.port) not in text
        for word in ("secret", "SECRET", "hunter2", "tok-", "169.254", "Found"):
            assert word not in text, text


# --- (a) the connection goes to the checked address -------------------------------------------------


class TestPinnedConnection:
    def test_worker_fetches_from_the_checked_address_only(
        self, tls_server: Server, policy: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The check sees 127.0.0.1 (allowed here); any later lookup would answer the metadata address.
        resolver = Rebinding(first="127.0.0.1", then="169.254.169.254")
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca))  # the worker's default TLS context
        uri = tls_server.url("/t.csv?sig=abc")
        local = remote_copy(policy, "tenant-a", uri, "training_file", tmp_path / "data", resolve=resolver)
        assert resolver.calls == [HOST]  # asked once, by the policy check; the fetch asked nobody
        path = Path(local.removeprefix("file://"))
        assert path.read_bytes() == CSV
        assert path.parent == tmp_path / "data" / "training_file"
        # The server saw an ordinary request for data.test: SNI and Host are the URL's host.
        assert tls_server.seen.paths == ["/t.csv?sig=abc"]
        assert tls_server.seen.hosts == [f"{HOST}:{tls_server.port}"]
        assert tls_server.seen.sni == [HOST]
        assert load_dataset(local).classes == ["neg", "pos"]

    def test_fetch_https_never_resolves(
        self, tls_server: Server, client_tls: ssl.SSLContext, no_dns: list[str], tmp_path: Path
    ) -> None:
        path = fetch_https(tls_server.url("/t.csv"), ["127.0.0.1"], tmp_path, context=client_tls)
        assert path == tmp_path / "t.csv"
        assert path.read_bytes() == CSV
        assert no_dns == []

    def test_unreachable_first_address_falls_through_to_the_next_checked_one(
        self, tls_server: Server, client_tls: ssl.SSLContext, no_dns: list[str], tmp_path: Path
    ) -> None:
        # 127.0.0.2 is loopback too, but nothing listens on the port there.
        url = tls_server.url("/t.csv")
        assert fetch_https(url, ["127.0.0.2", "127.0.0.1"], tmp_path, context=client_tls).read_bytes() == CSV
        assert no_dns == []

    def test_certificate_is_checked_against_the_url_host_not_the_address(
        self, tls_server: Server, client_tls: ssl.SSLContext, tmp_path: Path
    ) -> None:
        # Right address, wrong name: the certificate is for data.test only.
        with pytest.raises(DatasetRejected) as info:
            fetch_https(
                tls_server.url("/t.csv", host="other.test"), ["127.0.0.1"], tmp_path, context=client_tls
            )
        assert "TLS failed" in info.value.message
        assert_clean(info.value, tls_server)
        assert tls_server.seen.paths == []  # no request was sent
        assert not (tmp_path / "t.csv").exists()

    def test_untrusted_certificate(self, tls_server: Server, tmp_path: Path) -> None:
        with pytest.raises(DatasetRejected) as info:
            fetch_https(
                tls_server.url("/t.csv"), ["127.0.0.1"], tmp_path, context=ssl.create_default_context()
            )
        assert info.value.message == "cannot download https://data.test/t.csv: " + (
            "TLS failed (the server's certificate was not accepted)"
        )

    def test_loopback_is_refused_unless_allowed(
        self, tls_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        resolver = Rebinding(first="127.0.0.1", then="127.0.0.1")
        settings = Settings(env="test", secret_key="x", home=tmp_path / "home")
        with pytest.raises(DatasetRejected) as info:
            remote_copy(
                settings, "tenant-a", tls_server.url("/t.csv"), "training_file", tmp_path, resolve=resolver
            )
        assert "non-public address (127.0.0.1)" in info.value.message
        assert tls_server.seen.paths == []
        # The numeric shorthands of the issue never reach a resolver or the server.
        for host in ("2130706433", "0x7f000001", "127.1", "0177.0.0.1", "0"):
            with pytest.raises(DatasetRejected):
                check_dataset_uri(f"https://{host}:{tls_server.port}/t.csv", settings, resolve=resolver)
        assert resolver.calls == [HOST]  # only the data.test check above asked it
        assert tls_server.seen.paths == []

    def test_non_https_is_not_fetched(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetRejected, match="only https"):
            fetch_https("http://data.test/t.csv", ["127.0.0.1"], tmp_path)


# --- (b) redirects ----------------------------------------------------------------------------------


class TestRedirects:
    def test_redirect_is_refused_and_not_followed(
        self, tls_server: Server, client_tls: ssl.SSLContext, no_dns: list[str], tmp_path: Path
    ) -> None:
        with pytest.raises(DatasetRejected) as info:
            fetch_https(tls_server.url("/redirect.csv"), ["127.0.0.1"], tmp_path, context=client_tls)
        assert "HTTP 302" in info.value.message
        assert "redirects are not followed" in info.value.message
        assert_clean(info.value, tls_server)
        assert tls_server.seen.paths == ["/redirect.csv"]  # one request, nothing after it
        assert no_dns == []
        assert not (tmp_path / "redirect.csv").exists()


# --- (c) messages carry no remote content and no port -----------------------------------------------


class TestMessages:
    def test_http_error_reports_the_status_only(
        self, tls_server: Server, client_tls: ssl.SSLContext, tmp_path: Path
    ) -> None:
        with pytest.raises(DatasetRejected) as info:
            fetch_https(tls_server.url("/fail.csv?token=t0k"), ["127.0.0.1"], tmp_path, context=client_tls)
        assert info.value.message == "cannot download https://data.test/fail.csv: HTTP 500"
        assert_clean(info.value, tls_server)
        assert "t0k" not in info.value.message

    def test_not_found(self, tls_server: Server, client_tls: ssl.SSLContext, tmp_path: Path) -> None:
        with pytest.raises(DatasetRejected) as info:
            fetch_https(tls_server.url("/nope.csv"), ["127.0.0.1"], tmp_path, context=client_tls)
        assert info.value.message == "dataset not found: https://data.test/nope.csv (HTTP 404)"

    def test_closed_port_and_plain_http_are_classes(self, client_tls: ssl.SSLContext, tmp_path: Path) -> None:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        with pytest.raises(DatasetRejected) as info:
            fetch_https(f"https://{HOST}:{closed}/t.csv", ["127.0.0.1"], tmp_path, context=client_tls)
        assert info.value.message == "cannot download https://data.test/t.csv: could not connect"
        # A server that speaks plain HTTP on the port: "TLS failed", and none of its bytes.
        plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        thread = threading.Thread(target=plain.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            url = f"https://{HOST}:{plain.server_address[1]}/t.csv"
            with pytest.raises(DatasetRejected) as info:
                fetch_https(url, ["127.0.0.1"], tmp_path, context=client_tls, timeout=5)
        finally:
            plain.shutdown()
            plain.server_close()
            thread.join(timeout=5)
        assert info.value.message == "cannot download https://data.test/t.csv: TLS failed"
        assert str(plain.server_address[1]) not in info.value.message

    def test_slow_server_times_out(
        self, tls_server: Server, client_tls: ssl.SSLContext, tmp_path: Path
    ) -> None:
        with pytest.raises(DatasetRejected) as info:
            fetch_https(tls_server.url("/slow.csv"), ["127.0.0.1"], tmp_path, context=client_tls, timeout=0.5)
        assert info.value.message == "cannot download https://data.test/slow.csv: timed out"

    def test_dripping_server_meets_the_deadline(
        self, tls_server: Server, client_tls: ssl.SSLContext, tmp_path: Path
    ) -> None:
        # Each byte arrives well within the per-read timeout; the whole download may not take forever.
        started = time.monotonic()
        with pytest.raises(DatasetRejected) as info:
            fetch_https(
                tls_server.url("/drip.csv"), ["127.0.0.1"], tmp_path, context=client_tls, deadline=0.8
            )
        assert "timed out" in info.value.message
        assert time.monotonic() - started < 3
        assert not (tmp_path / "drip.csv").exists()

    def test_truncated_body_is_refused(
        self, tls_server: Server, client_tls: ssl.SSLContext, tmp_path: Path
    ) -> None:
        with pytest.raises(DatasetRejected) as info:
            fetch_https(tls_server.url("/short.csv"), ["127.0.0.1"], tmp_path, context=client_tls)
        assert info.value.message == "cannot download https://data.test/short.csv: the download was cut short"
        assert not (tmp_path / "short.csv").exists()

    def test_size_cap(self, tls_server: Server, client_tls: ssl.SSLContext, tmp_path: Path) -> None:
        with pytest.raises(DatasetRejected) as info:
            fetch_https(tls_server.url("/t.csv"), ["127.0.0.1"], tmp_path, context=client_tls, max_bytes=10)
        assert "more than the limit of 10 bytes" in info.value.message
        assert not (tmp_path / "t.csv").exists()

    def test_fetched_secret_never_comes_back_in_the_job_error(
        self, tls_server: Server, policy: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The leak: a file that is no dataset, whose first line became the error message.
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca))
        resolver = Rebinding(first="127.0.0.1", then="169.254.169.254")
        local = remote_copy(
            policy, "tenant-a", tls_server.url("/env.csv"), "training_file", tmp_path, resolve=resolver
        )
        with pytest.raises(DatasetRejected) as info:
            load_train_val(local)
        assert "`label` column" in info.value.message
        assert "`text` or an `image`" in info.value.message
        assert_clean(info.value, tls_server)
        assert "AWS" not in info.value.message
