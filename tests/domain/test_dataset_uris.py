"""The dataset-URI policy, table by table: schemes, file:// roots, s3 buckets, and https hosts in every
numeric and IPv6 spelling that reaches a non-public address."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from domain.dataset_uris import ParsedUri, check_dataset_uri, is_public_address
from domain.settings import Settings
from grft_core.data import load_dataset
from grft_core.errors import DatasetRejected

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def fake_dns(table: dict[str, list[str]]) -> Any:
    """A resolver answering from ``table`` (names resolve without a DNS server, as in CI)."""

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in table[host]
        ]

    return resolve


DNS = fake_dns(
    {
        "data.example.com": [PUBLIC_V4, PUBLIC_V6],
        "rebind.example.com": [PUBLIC_V4, "127.0.0.1"],  # one bad answer among good ones
        "metadata.example.com": ["169.254.169.254"],
        "internal.example.com": ["10.1.2.3"],
        "v6local.example.com": ["fe80::1%eth0"],
        "mapped.example.com": ["::ffff:127.0.0.1"],
        "localhost": ["127.0.0.1", "::1"],
    }
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "datasets" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return Settings(env="test", secret_key="x", home=tmp_path / "home", dataset_roots=[tmp_path / "datasets"])


def rejected(uri: str, settings: Settings, field: str = "training_file") -> DatasetRejected:
    with pytest.raises(DatasetRejected) as info:
        check_dataset_uri(uri, settings, field=field, resolve=DNS)
    assert info.value.param == field
    assert info.value.message.startswith(field)
    return info.value


class TestSchemes:
    @pytest.mark.parametrize(
        "uri",
        [
            "http://data.example.com/t.csv",
            "ftp://data.example.com/t.csv",
            "gs://bucket/t.csv",
            "memory://x/t.csv",
            "javascript:alert(1)",
            "/etc/passwd",
            "t.csv",
            "",
        ],
    )
    def test_refused(self, uri: str, settings: Settings) -> None:
        assert "scheme file://, s3://, https://" in rejected(uri, settings).message

    @pytest.mark.parametrize("uri", ["https://data.example.com/a b.csv", "https://data.example.com/\x00"])
    def test_spaces_and_control_characters(self, uri: str, settings: Settings) -> None:
        assert "control characters" in rejected(uri, settings).message

    def test_field_is_named(self, settings: Settings) -> None:
        assert rejected("ftp://x/y", settings, field="validation_file").param == "validation_file"


class TestFileRoots:
    def test_under_a_root(self, settings: Settings) -> None:
        path = settings.dataset_roots[0] / "sub" / "t.csv"
        parsed = check_dataset_uri(path.as_uri(), settings)
        assert parsed == ParsedUri(uri=path.as_uri(), scheme="file", path=path.resolve())

    @pytest.mark.parametrize(
        "uri",
        [
            "file:///etc/passwd",
            "file://{root}/../outside/t.csv",  # ".." is resolved before the root check
            "file://{root}/link/t.csv",  # a link inside the root that leads outside it
            "file://otherhost{root}/t.csv",  # a host: not a local path
        ],
    )
    def test_outside(self, uri: str, settings: Settings) -> None:
        root = settings.dataset_roots[0]
        (root / "link").symlink_to(root.parent / "outside")
        assert "file://" in rejected(uri.format(root=root), settings).message

    def test_no_roots_no_files(self, settings: Settings) -> None:
        settings.dataset_roots = []
        rejected((Path.cwd() / "t.csv").as_uri(), settings)


TENANT = "tenant-a"


@pytest.fixture
def s3_settings(settings: Settings) -> Settings:
    settings.dataset_s3_prefix = "s3://datasets/{tenant}/"
    settings.artifact_url = "s3://grft-artifacts"
    return settings


def s3_rejected(uri: str, settings: Settings, tenant: str | None = TENANT) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as info:
        check_dataset_uri(uri, settings, field="training_file", tenant=tenant, resolve=DNS)
    assert info.value.param == "training_file"
    return info.value


class TestS3:
    def test_bucket(self, s3_settings: Settings) -> None:
        parsed = check_dataset_uri("s3://datasets/tenant-a/k/t.csv", s3_settings, tenant=TENANT)
        assert parsed == ParsedUri(uri="s3://datasets/tenant-a/k/t.csv", scheme="s3", host="datasets")

    @pytest.mark.parametrize("uri", ["s3:///t.csv", "s3://Bad_Bucket/t.csv", "s3://a..b/t.csv", "s3://u@b/k"])
    def test_bad_bucket(self, uri: str, settings: Settings) -> None:
        assert "bucket" in rejected(uri, settings).message

    @pytest.mark.parametrize(
        "uri", ["s3://datasets/tenant-a/t.csv", "s3://datasets/tenant-a/sub/t.csv", "s3://datasets/tenant-a/"]
    )
    def test_inside_the_tenant_prefix(self, uri: str, s3_settings: Settings) -> None:
        assert check_dataset_uri(uri, s3_settings, tenant=TENANT).uri == uri

    @pytest.mark.parametrize(
        ("uri", "words"),
        [
            ("s3://datasets/tenant-b/t.csv", "prefix s3://datasets/tenant-a/"),  # another tenant's
            ("s3://datasets/tenant-ab/t.csv", "prefix"),  # shares the characters, not the segment
            ("s3://datasets/TENANT-A/t.csv", "prefix"),  # keys are case-sensitive
            ("s3://datasets/t.csv", "prefix"),
            ("s3://datasets/", "prefix"),
            ("s3://other/tenant-a/t.csv", "prefix"),
            ("s3://grft-artifacts/files/tenant-a/file-1", "prefix"),  # the artifact store
            ("s3://grft-artifacts/", "prefix"),
            ("s3://datasets/tenant-a/../tenant-b/t.csv", "'..'"),
            ("s3://datasets/tenant-a/./t.csv", "'.'"),
            ("s3://datasets/tenant-a//t.csv", "empty"),
            ("s3://datasets/tenant-a/%2e%2e/tenant-b/t.csv", "percent-escapes"),
            ("s3://datasets/tenant-a%2F..%2Ftenant-b/t.csv", "percent-escapes"),
            ("s3://datasets/tenant-a/..%2ftenant-b/t.csv", "percent-escapes"),
            ("s3://datasets/tenant-a/%252e%252e/t.csv", "percent-escapes"),  # double-encoded
            ("s3://datasets/tenant-a\\..\\tenant-b/t.csv", "backslashes"),
            ("s3://datasets/tenant-a/t.csv?versionId=1", "query"),
            ("s3://datasets/tenant-a/t.csv#frag", "fragment"),
            ("s3://DATASETS/tenant-a/t.csv", "bucket"),
        ],
    )
    def test_outside_the_tenant_prefix(self, uri: str, words: str, s3_settings: Settings) -> None:
        assert words in s3_rejected(uri, s3_settings).message

    def test_refused_when_no_prefix_is_configured(self, settings: Settings) -> None:
        assert "not enabled" in s3_rejected("s3://datasets/tenant-a/t.csv", settings).message

    @pytest.mark.parametrize("tenant", [None, "", "..", "a/b", "../tenant-b", "{tenant}", "a%2fb"])
    def test_needs_a_plain_tenant_id(self, tenant: str | None, s3_settings: Settings) -> None:
        error = s3_rejected("s3://datasets/tenant-a/t.csv", s3_settings, tenant=tenant)
        assert "organization" in error.message

    def test_artifact_store_inside_a_tenant_prefix_stays_refused(self, s3_settings: Settings) -> None:
        # An operator put the artifact store (every tenant's uploads) under one tenant's area.
        s3_settings.artifact_url = "s3://datasets/tenant-a/store"
        check_dataset_uri("s3://datasets/tenant-a/t.csv", s3_settings, tenant=TENANT)
        error = s3_rejected("s3://datasets/tenant-a/store/files/tenant-b/file-1", s3_settings)
        assert "artifact store" in error.message
        s3_settings.artifact_url = "s3://datasets/tenant-a"  # the very prefix
        assert "artifact store" in s3_rejected("s3://datasets/tenant-a/t.csv", s3_settings).message

    def test_prefix_set_aside_inside_the_artifact_bucket(self, s3_settings: Settings) -> None:
        s3_settings.dataset_s3_prefix = "s3://grft-artifacts/datasets/{tenant}/"
        check_dataset_uri("s3://grft-artifacts/datasets/tenant-a/t.csv", s3_settings, tenant=TENANT)
        s3_rejected("s3://grft-artifacts/files/tenant-a/file-1", s3_settings)
        s3_rejected("s3://grft-artifacts/datasets/tenant-b/t.csv", s3_settings)

    @pytest.mark.parametrize(
        ("template", "normalised"),
        [
            ("s3://datasets/{tenant}", "s3://datasets/{tenant}/"),
            ("s3://datasets/ml/{tenant}/train/", "s3://datasets/ml/{tenant}/train/"),
        ],
    )
    def test_prefix_setting_normalised(self, template: str, normalised: str) -> None:
        assert Settings(dataset_s3_prefix=template).dataset_s3_prefix == normalised

    @pytest.mark.parametrize(
        "template",
        [
            "s3://datasets/",  # no {tenant}: every tenant would share one area
            "s3://datasets/t-{tenant}/",  # not a whole segment
            "s3://{tenant}/x/",  # in the bucket
            "s3://datasets/{tenant}/{tenant}/",
            "s3://datasets/{other}/{tenant}/",
            "s3://datasets/../{tenant}/",
            "s3://datasets//{tenant}/",
            "s3://datasets/%7Btenant%7D/",
            "https://datasets/{tenant}/",
        ],
    )
    def test_prefix_setting_refused(self, template: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GRFT_DATASET_S3_PREFIX", template)
        with pytest.raises(ValueError, match="tenant"):
            Settings()

    def test_local_artifact_store_is_no_dataset_root(self, settings: Settings) -> None:
        # A root that holds the artifact folder does not open every tenant's uploads.
        settings.dataset_roots = [settings.home]
        store = Path(settings.artifact_url.removeprefix("file://"))
        rejected((store / "files" / "tenant-b" / "file-1").as_uri(), settings)
        check_dataset_uri((settings.home / "mine.csv").as_uri(), settings)


class TestHttpsHosts:
    def test_public_name_resolves_everywhere_public(self, settings: Settings) -> None:
        parsed = check_dataset_uri("https://Data.Example.com./t.csv?sig=1", settings, resolve=DNS)
        assert parsed.host == "data.example.com"
        assert set(parsed.addresses) == {PUBLIC_V4, PUBLIC_V6}

    @pytest.mark.parametrize("host", [PUBLIC_V4, f"[{PUBLIC_V6}]", "[::ffff:8.8.8.8]"])
    def test_public_literals(self, host: str, settings: Settings) -> None:
        assert check_dataset_uri(f"https://{host}:8443/t.csv", settings, resolve=DNS).scheme == "https"

    @pytest.mark.parametrize(
        ("host", "address"),
        [
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1.", "127.0.0.1"),
            ("10.0.0.1", "10.0.0.1"),
            ("169.254.169.254", "169.254.169.254"),
            ("100.64.0.1", "100.64.0.1"),  # carrier-grade NAT
            ("0.0.0.0", "0.0.0.0"),
            ("224.0.0.1", "224.0.0.1"),  # multicast
            ("[::1]", "::1"),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),  # IPv4-mapped loopback
            ("[fe80::]", "fe80::"),
            ("[fc00::]", "fc00::"),
            ("[ff02::1]", "ff02::1"),
            ("[2002:7f00:1::]", "2002:7f00:1::"),  # 6to4 wrapping 127.0.0.1
            ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe"),  # NAT64 of 169.254.169.254
            ("localhost", "127.0.0.1"),
            ("rebind.example.com", "127.0.0.1"),
            ("metadata.example.com", "169.254.169.254"),
            ("internal.example.com", "10.1.2.3"),
            ("v6local.example.com", "fe80::1"),
            ("mapped.example.com", "::ffff:127.0.0.1"),
        ],
    )
    def test_non_public(self, host: str, address: str, settings: Settings) -> None:
        message = rejected(f"https://{host}/t.csv", settings).message
        assert f"non-public address ({ipaddress.ip_address(address)})" in message

    @pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "0", "1.2.3.0x4"])
    def test_numeric_shorthands_refused_by_form(self, host: str, settings: Settings) -> None:
        assert "DNS name or an IP address literal" in rejected(f"https://{host}/t.csv", settings).message

    @pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "0"])
    def test_numeric_shorthands_do_resolve_to_loopback_or_any(self, host: str) -> None:
        # Why they are refused by form: the system resolver reads them as IPv4 numbers.
        answers = {info[4][0] for info in socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)}
        assert answers <= {"127.0.0.1", "0.0.0.0"}
        assert not any(is_public_address(ipaddress.ip_address(a)) for a in answers)

    @pytest.mark.parametrize(
        ("uri", "words"),
        [
            ("https://user:pw@data.example.com/t.csv", "credentials"),
            ("https://data.example.com:99999/t.csv", "port"),
            ("https:///t.csv", "must name a host"),
            ("https://[fe80::1%25eth0]/t.csv", "IPv6 literal"),
            ("https://[127.0.0.1]/t.csv", "not a valid URI"),  # urlsplit refuses IPv4 in brackets
            ("https://under_score.example.com/t.csv", "DNS name"),
            ("https://-dash.example.com/t.csv", "DNS name"),
            ("https://nowhere.example.com/t.csv", "could not be resolved"),
        ],
    )
    def test_malformed_hosts(self, uri: str, words: str, settings: Settings) -> None:
        assert words in rejected(uri, settings).message

    def test_messages_echo_no_remote_content(self, settings: Settings) -> None:
        def hostile(*_: Any, **__: Any) -> list[tuple[Any, ...]]:
            raise socket.gaierror(socket.EAI_FAIL, "<html>secret from resolver</html>")

        with pytest.raises(DatasetRejected) as info:
            check_dataset_uri("https://data.example.com/t.csv", settings, resolve=hostile)
        assert "secret" not in info.value.message


class TestAllowList:
    def test_hostname_allowed_even_if_private(self, settings: Settings) -> None:
        settings.dataset_allow_hosts = ["internal.example.com"]
        parsed = check_dataset_uri("https://internal.example.com/t.csv", settings, resolve=DNS)
        assert parsed.addresses == ("10.1.2.3",)
        rejected("https://metadata.example.com/t.csv", settings)  # other names stay refused

    def test_network_allowed(self, settings: Settings) -> None:
        settings.dataset_allow_hosts = ["10.0.0.0/8"]
        check_dataset_uri("https://internal.example.com/t.csv", settings, resolve=DNS)
        check_dataset_uri("https://10.9.9.9/t.csv", settings, resolve=DNS)
        check_dataset_uri("https://[::ffff:10.9.9.9]/t.csv", settings, resolve=DNS)  # mapped into it
        rejected("https://rebind.example.com/t.csv", settings)  # 127.0.0.1 is outside the network

    def test_settings_parse_and_check_entries(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GRFT_DATASET_ALLOW_HOSTS", '["Data.Corp.", "10.8.0.0/16", "fd00::/8"]')
        assert Settings().dataset_allow_hosts == ["data.corp", "10.8.0.0/16", "fd00::/8"]
        monkeypatch.setenv("GRFT_DATASET_ALLOW_HOSTS", '["not a host"]')
        with pytest.raises(ValueError, match="neither a host name nor an IP network"):
            Settings()


class _Hostile(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(500, "<secret reason>")
        self.end_headers()
        self.wfile.write(b"<secret body>")

    def log_message(self, format: str, *args: object) -> None:
        pass


class TestFetchErrors:
    def test_remote_words_never_reach_the_message(self) -> None:
        # The fetch (grft_core's mechanics) reports the status, not the server's reason or body.
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            with pytest.raises(DatasetRejected) as info:
                load_dataset(f"http://127.0.0.1:{server.server_address[1]}/t.csv")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        assert "HTTP 500" in info.value.message
        assert "secret" not in info.value.message
