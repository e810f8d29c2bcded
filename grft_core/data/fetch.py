"""Local copies of dataset URIs: local paths and ``file://`` URLs as they are, ``http(s)://`` downloaded
through the standard library to addresses resolved once (:func:`fetch_https` takes addresses a caller
already checked), and any other fsspec URL (``s3://``, ...) copied file by file.

Downloads refuse redirects, cap size (:data:`MAX_DATASET_BYTES`) and time, and their errors name the URI
and the class of failure, never text a remote server sent. Which URIs may be read at all is the caller's
policy, not this module's.
"""

from __future__ import annotations

import http.client
import ipaddress
import posixpath
import socket
import ssl
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from grft_core.cancel import ShouldStop, check_stop, stop_checks
from grft_core.errors import DatasetRejected, TrainingInterrupted

__all__ = ["MAX_DATASET_BYTES", "fetch_https", "local_copy"]

# Upper bound on what one dataset may occupy once downloaded or extracted; it keeps a hostile archive
# or URL from filling the worker's disk.
MAX_DATASET_BYTES = 4 * 1024**3
# http(s) downloads: each socket operation (connect, TLS handshake, one read) within the first, the
# whole download within the second, so a server that drips a byte a minute is cut off too.
_DOWNLOAD_TIMEOUT_S = 60.0
_DOWNLOAD_DEADLINE_S = 1800.0
_CHUNK = 1024 * 1024
_BACKEND_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
}


@dataclass(frozen=True)
class _Transfer:
    """The bounds of one http(s) download (see :func:`fetch_https`); ``max_bytes`` None means
    :data:`MAX_DATASET_BYTES`, read when the download starts."""

    max_bytes: int | None = None
    timeout: float = _DOWNLOAD_TIMEOUT_S
    deadline: float = _DOWNLOAD_DEADLINE_S
    context: ssl.SSLContext | None = None


def _check_size(total: int, display: str) -> None:
    if total > MAX_DATASET_BYTES:
        raise DatasetRejected(
            f"{display} holds {total} bytes, more than the limit of {MAX_DATASET_BYTES}", param=display
        )


def local_copy(uri: str, workdir: Path) -> Path:
    """The local path of ``uri``: a path or ``file://`` URL as it is, anything else copied into ``workdir``.

    Raises :class:`DatasetRejected` for a ``file://`` URL naming another host, an unsupported scheme or
    a backend that is not installed, a missing remote file, a download over :data:`MAX_DATASET_BYTES`
    or failing; :class:`TrainingInterrupted` when the current stop check asks to stop.
    """
    parts = urlsplit(uri)
    if "://" not in uri:
        return Path(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DatasetRejected(
                f"file:// URIs must name a local path, not host {parts.netloc!r}", param=uri
            )
        return Path(urllib.request.url2pathname(parts.path))
    import fsspec

    name = _local_name(parts.path)
    if parts.scheme in ("http", "https"):
        # Resolved here once, and the connection goes to exactly those addresses: a caller with a
        # policy checks the addresses itself and calls fetch_https with them (no second resolution).
        # A plain GET that refuses redirects and caps size and time; fsspec's http backend follows
        # redirects, which would let a URI that passed a host check lead somewhere else.
        return _fetch(uri, _resolve_once(uri), workdir, _Transfer())
    try:
        fs, remote = fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        package = _BACKEND_PACKAGES.get(parts.scheme, f"the fsspec backend for {parts.scheme}://")
        raise DatasetRejected(
            f"cannot read {uri}: the {parts.scheme} backend is not installed (install {package})", param=uri
        ) from exc
    except ValueError as exc:
        raise DatasetRejected(f"unsupported URI scheme {parts.scheme}:// in {uri}", param=uri) from exc
    try:
        if fs.isdir(remote):
            return _copy_remote_dir(fs, remote, workdir / name, uri)
        with fs.open(remote, "rb") as source:
            return _copy_stream(source, workdir / name, uri)
    except FileNotFoundError as exc:
        raise DatasetRejected(f"dataset not found: {uri}", param=uri) from exc
    except (DatasetRejected, TrainingInterrupted):
        raise
    except Exception as exc:  # noqa: BLE001 - backends (botocore, aiohttp) raise their own error types
        # The type only: a backend's message can quote what the remote server answered.
        raise DatasetRejected(f"cannot download {uri}: {type(exc).__name__}", param=uri) from exc


def _copy_remote_dir(fs: Any, remote: str, target: Path, uri: str) -> Path:
    base = remote.rstrip("/")
    total = 0
    for path in sorted(fs.find(base)):
        check_stop()
        relative = posixpath.relpath(path, base)
        if relative.startswith("..") or posixpath.isabs(relative):
            raise DatasetRejected(f"remote file {path!r} is outside {uri}", param=path)
        total += int(fs.size(path) or 0)
        _check_size(total, uri)
        destination = target.joinpath(*PurePosixPath(relative).parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with fs.open(path, "rb") as source:
            _copy_stream(source, destination, uri)
    target.mkdir(parents=True, exist_ok=True)
    return target


def _copy_stream(source: IO[bytes], target: Path, uri: str) -> Path:
    written = 0
    with target.open("wb") as sink:
        while chunk := source.read(_CHUNK):
            check_stop()
            written += len(chunk)
            _check_size(written, uri)
            sink.write(chunk)
    return target


def fetch_https(
    url: str,
    addresses: Sequence[str],
    folder: Path,
    *,
    max_bytes: int | None = None,
    timeout: float = _DOWNLOAD_TIMEOUT_S,
    deadline: float = _DOWNLOAD_DEADLINE_S,
    context: ssl.SSLContext | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """Download an ``https://`` URL into ``folder``, connecting only to ``addresses``; resolve nothing.

    ``addresses`` are the IP addresses a caller's policy checked for the URL's host (tried in order);
    the TLS handshake and the certificate check use the URL's host name (SNI), and so does the
    ``Host`` header, so the server sees an ordinary request while no second DNS answer can redirect
    the connection elsewhere. Redirects are refused (a 3xx is an error), as are bodies over
    ``max_bytes`` (default :data:`MAX_DATASET_BYTES`), any socket operation slower than ``timeout``
    seconds and a download longer than ``deadline``. ``context`` defaults to the system's verifying
    TLS context. ``should_stop`` is asked between received chunks. Returns the written file, named after
    the URL's last path segment.

    Raises :class:`DatasetRejected` with the class of the failure ("could not connect", "TLS failed",
    "timed out", "HTTP 503", ...) and the URL without its port or query; never text the server sent;
    :class:`TrainingInterrupted` when ``should_stop`` returns True (nothing is left in ``folder``).
    """
    if urlsplit(url).scheme != "https":
        raise DatasetRejected(f"cannot download {_shown(url)}: only https:// URLs are fetched", param="uri")
    with stop_checks(should_stop):
        return _fetch(url, addresses, folder, _Transfer(max_bytes, timeout, deadline, context))


def _local_name(path: str) -> str:
    """A safe local file name for a URL path: its last segment (the suffix tells the format)."""
    name = PurePosixPath(path).name
    return name if name not in ("", ".", "..") and "\\" not in name else "download"


def _shown(url: str) -> str:
    """The URL as messages show it: scheme, host and path, without credentials, port or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    shown = f"{parts.scheme}://{host}{parts.path}"
    return shown if len(shown) <= 200 else shown[:197] + "..."


def _resolve_once(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        shown = _shown(url)
        raise DatasetRejected(
            f"cannot download {shown}: the host could not be resolved", param=shown
        ) from exc
    return [str(info[4][0]) for info in infos]


def _open_socket(addresses: Sequence[str], port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the first of ``addresses`` (IP literals only) that accepts one."""
    failure: OSError = OSError("no address to connect to")
    for text in addresses:
        address = ipaddress.ip_address(text)  # an IP literal: nothing here asks a resolver
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((str(address), port))
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
    raise failure


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP to ``host`` whose socket goes to one of ``addresses`` (the library's http://)."""

    def __init__(self, host: str, port: int, addresses: Sequence[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.addresses = tuple(addresses)

    def connect(self) -> None:
        self.sock = _open_socket(self.addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``host`` whose socket goes to one of ``addresses``; TLS verifies ``host``'s certificate."""

    def __init__(
        self, host: str, port: int, addresses: Sequence[str], timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.addresses = tuple(addresses)
        self.tls = context

    def connect(self) -> None:
        sock = _open_socket(self.addresses, self.port, self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _fetch(url: str, addresses: Sequence[str], folder: Path, transfer: _Transfer) -> Path:
    parts = urlsplit(url)
    shown = _shown(url)

    def refuse(reason: str) -> DatasetRejected:
        return DatasetRejected(f"cannot download {shown}: {reason}", param=shown)

    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        pinned = [str(ipaddress.ip_address(a.split("%", 1)[0])) for a in addresses]
    except ValueError as exc:
        raise refuse("the port or a checked address is not valid") from exc
    if not host or not pinned or parts.scheme not in ("http", "https"):
        raise refuse("no checked address to connect to")
    # MAX_DATASET_BYTES is read at call time (tests lower it).
    limit = MAX_DATASET_BYTES if transfer.max_bytes is None else transfer.max_bytes
    connection: _PinnedHTTPConnection | _PinnedHTTPSConnection
    if parts.scheme == "https":
        tls = transfer.context or ssl.create_default_context()
        connection = _PinnedHTTPSConnection(host, port, pinned, transfer.timeout, tls)
    else:
        connection = _PinnedHTTPConnection(host, port, pinned, transfer.timeout)
    target = folder / _local_name(parts.path)
    ends = time.monotonic() + transfer.deadline
    response: http.client.HTTPResponse | None = None
    try:
        try:
            connection.connect()
        except ssl.SSLCertVerificationError as exc:
            raise refuse("TLS failed (the server's certificate was not accepted)") from exc
        except ssl.SSLError as exc:
            raise refuse("TLS failed") from exc
        except OSError as exc:  # refused, unreachable, timed out: one class, no port scanning by message
            raise refuse("could not connect") from exc
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = {"User-Agent": "grft", "Accept": "*/*", "Connection": "close"}
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            _check_status(response.status, shown)
            declared = response.getheader("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > limit:
                raise DatasetRejected(f"{shown} holds more than the limit of {limit} bytes", param=shown)
            written = 0
            with target.open("wb") as sink:
                while True:
                    # read1: one receive at most, each within ``timeout``, so the deadline is checked
                    # between receives and a server dripping bytes cannot stretch one read forever.
                    check_stop()
                    if time.monotonic() > ends:
                        raise TimeoutError("download deadline")
                    chunk = response.read1(_CHUNK)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > limit:
                        raise DatasetRejected(
                            f"{shown} holds more than the limit of {limit} bytes", param=shown
                        )
                    sink.write(chunk)
            if response.length:  # the body ended before the bytes its Content-Length promised
                raise refuse("the download was cut short")
        except DatasetRejected:
            raise
        except TimeoutError as exc:
            raise refuse("timed out") from exc
        except http.client.IncompleteRead as exc:
            raise refuse("the download was cut short") from exc
        except http.client.HTTPException as exc:
            raise refuse("the server's answer is not valid HTTP") from exc
        except ssl.SSLError as exc:
            raise refuse("TLS failed") from exc
        except OSError as exc:
            raise refuse("the connection failed during the download") from exc
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        if response is not None:
            response.close()
        connection.close()
    return target


def _check_status(status: int, shown: str) -> None:
    # The status only: the reason phrase, headers and body are the server's words.
    if status == 200:
        return
    if status in (404, 410):
        raise DatasetRejected(f"dataset not found: {shown} (HTTP {status})", param=shown)
    if 300 <= status < 400:
        raise DatasetRejected(
            f"cannot download {shown}: HTTP {status}, a redirect, and redirects are not followed", param=shown
        )
    raise DatasetRejected(f"cannot download {shown}: HTTP {status}", param=shown)
