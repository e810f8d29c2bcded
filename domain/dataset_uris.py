"""The dataset-URI policy: which URIs a tenant may name as training or validation data.

One rule set, applied twice: by the API when a job is created, and by the worker right before it
fetches (a row may predate a change of the settings, and a name may resolve elsewhere by then).

* ``file://``: a local path (no host) under one of ``dataset_roots``, after resolving ``..`` and links,
  and not inside a local artifact store.
* ``s3://``: only inside the caller's own prefix, ``dataset_s3_prefix`` with ``{tenant}`` replaced by the
  tenant id (``s3://datasets/{tenant}/`` gives ``s3://datasets/<tenant-id>/``); none when it is empty.
  The worker reads s3 with the service's own credentials, so this prefix is the only thing that keeps
  one tenant from naming another's data or the artifact store (a confused deputy). The key is compared
  segment by segment, after refusing every spelling that a client or server could read differently:
  percent-escapes, backslashes, ``.``/``..``/empty segments, a query or a fragment. A URI inside the
  artifact store (``artifact_url``, which holds every tenant's uploads) is refused unless the tenant's
  prefix is an area set aside strictly inside it. The endpoint is the operator's configuration.
* ``https://``: no credentials in the URI; the host is a hostname or an IP literal, and every address it
  resolves to is global unicast, unless the operator lists the host (or a network holding the address)
  in ``dataset_allow_hosts``. Numeric shorthands (``2130706433``, ``0x7f000001``, ``127.1``,
  ``0177.0.0.1``, ``0``) are refused by form: resolvers read them as IPv4 addresses, most often
  loopback. IPv4 addresses embedded in IPv6 ones (mapped, 6to4, Teredo, NAT64) are checked as well.

The fetch itself must not follow redirects (``grft_core.data`` refuses them), or a public URI could
lead to an address this policy never saw. Messages name the field and the rule, never remote content.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit
from urllib.request import url2pathname

from domain.settings import Settings
from grft_core.errors import DatasetRejected

__all__ = ["SCHEMES", "ParsedUri", "Resolver", "check_dataset_uri", "is_public_address"]

SCHEMES = ("file", "s3", "https")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``socket.getaddrinfo``'s shape; tests pass their own to answer for names without a DNS server.
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# A last label that is all digits, or hexadecimal with 0x, makes resolvers parse the whole name as an
# IPv4 number (inet_aton), so it is no hostname; real top-level domains always start with a letter.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# A tenant id becomes one path segment of an s3 key: no "/", no "." or "..", nothing to escape.
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


@dataclass(frozen=True)
class ParsedUri:
    """An accepted dataset URI.

    Attributes:
        uri: the URI as given (what the job row stores and the loader reads).
        scheme: ``file``, ``s3`` or ``https``.
        host: the lower-cased host (``https``), or the bucket (``s3``); None for ``file``.
        path: the resolved local path (``file``), else None.
        addresses: the addresses the host resolved to when checked (``https``).
    """

    uri: str
    scheme: str
    host: str | None = None
    path: Path | None = None
    addresses: tuple[str, ...] = ()


def check_dataset_uri(
    uri: str,
    settings: Settings,
    *,
    field: str = "training_file",
    tenant: str | None = None,
    resolve: Resolver = socket.getaddrinfo,
) -> ParsedUri:
    """Accept ``uri`` as a dataset location, or raise ``DatasetRejected`` naming ``field``.

    ``tenant`` is the caller's tenant id (``s3://`` URIs are refused without one); ``resolve`` looks
    the host of an ``https://`` URI up (``socket.getaddrinfo`` by default), once: a fetch must connect
    to the returned ``addresses`` and resolve nothing itself.
    """
    if any(ch.isspace() or not ch.isprintable() for ch in uri):
        raise DatasetRejected(f"{field} must not contain spaces or control characters", param=field)
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise DatasetRejected(f"{field} is not a valid URI", param=field) from exc
    if "://" not in uri or parts.scheme not in SCHEMES:
        allowed = ", ".join(f"{s}://" for s in SCHEMES)
        raise DatasetRejected(
            f"{field} must be an uploaded file id (file-...) or a URI with scheme {allowed}", param=field
        )
    if parts.scheme == "file":
        return _check_file(uri, parts, settings, field)
    if parts.scheme == "s3":
        return _check_s3(uri, parts, settings, field, tenant)
    return _check_https(uri, parts, settings, field, resolve)


def _check_file(uri: str, parts: SplitResult, settings: Settings, field: str) -> ParsedUri:
    if parts.netloc not in ("", "localhost"):
        raise DatasetRejected(f"{field}: file:// URIs must name a local path, with no host", param=field)
    # resolve() follows links and "..", so a link inside a root cannot point outside it.
    path = Path(url2pathname(parts.path)).resolve()
    if not any(path.is_relative_to(root.resolve()) for root in settings.dataset_roots):
        raise DatasetRejected(f"{field}: file:// URIs must name a path under an allowed root", param=field)
    if settings.artifact_url.startswith("file:"):
        # A root that holds the artifact folder must not open every tenant's uploads to everyone.
        store = Path(url2pathname(urlsplit(settings.artifact_url).path)).resolve()
        if path.is_relative_to(store):
            raise DatasetRejected(
                f"{field}: file:// URIs must not name the service's artifact store", param=field
            )
    return ParsedUri(uri=uri, scheme="file", path=path)


def _check_s3(uri: str, parts: SplitResult, settings: Settings, field: str, tenant: str | None) -> ParsedUri:
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise DatasetRejected(f"{field}: s3:// URIs must name a valid bucket (s3://bucket/key)", param=field)
    if "?" in uri or "#" in uri:
        raise DatasetRejected(f"{field}: s3:// URIs must not carry a query or a fragment", param=field)
    if "%" in parts.path or "\\" in parts.path:
        raise DatasetRejected(
            f"{field}: s3:// keys must be written out plainly, without percent-escapes or backslashes",
            param=field,
        )
    key = _segments(parts.path)
    if key is None:
        raise DatasetRejected(
            f"{field}: s3:// keys must not hold empty, '.' or '..' path segments", param=field
        )
    if not settings.dataset_s3_prefix:
        raise DatasetRejected(f"{field}: s3:// dataset URIs are not enabled on this service", param=field)
    if tenant is None or not _TENANT.match(tenant):
        raise DatasetRejected(f"{field}: s3:// dataset URIs need the caller's organization", param=field)
    prefix = _location(settings.dataset_s3_prefix.replace("{tenant}", tenant))
    location = (bucket, key)
    if prefix is None or not _inside(location, prefix):
        mine = settings.dataset_s3_prefix.replace("{tenant}", tenant)
        raise DatasetRejected(
            f"{field}: s3:// URIs must name data under this organization's prefix {mine}", param=field
        )
    store = _location(settings.artifact_url) if settings.artifact_url.startswith("s3://") else None
    if store is not None and _inside(location, store) and not (_inside(prefix, store) and prefix != store):
        raise DatasetRejected(f"{field}: s3:// URIs must not name the service's artifact store", param=field)
    return ParsedUri(uri=uri, scheme="s3", host=bucket)


def _segments(path: str) -> tuple[str, ...] | None:
    """The key's path segments (a trailing ``/`` names a folder), or None for ``//``, ``.`` or ``..``."""
    stripped = path.removeprefix("/").removesuffix("/")
    segments = tuple(stripped.split("/")) if stripped else ()
    return None if any(s in ("", ".", "..") for s in segments) else segments


def _location(url: str) -> tuple[str, tuple[str, ...]] | None:
    parts = urlsplit(url)
    segments = _segments(parts.path)
    return None if segments is None else (parts.netloc, segments)


def _inside(location: tuple[str, tuple[str, ...]], area: tuple[str, tuple[str, ...]]) -> bool:
    """Whether ``location`` (bucket, key segments) is ``area`` or lies under it, segment by segment."""
    (bucket, key), (area_bucket, area_key) = location, area
    return bucket == area_bucket and key[: len(area_key)] == area_key


def _check_https(
    uri: str, parts: SplitResult, settings: Settings, field: str, resolve: Resolver
) -> ParsedUri:
    if "@" in parts.netloc:
        raise DatasetRejected(f"{field}: URIs must not carry credentials before the host", param=field)
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise DatasetRejected(f"{field}: the port is not a number from 1 to 65535", param=field) from exc
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise DatasetRejected(f"{field}: https:// URIs must name a host", param=field)
    literal = _ip_literal(host, parts.netloc, field)
    if literal is None and not _is_hostname(host):
        raise DatasetRejected(f"{field}: the host must be a DNS name or an IP address literal", param=field)
    allow_names, allow_networks = _allow_list(settings.dataset_allow_hosts)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise DatasetRejected(f"{field}: the host {host} could not be resolved", param=field) from exc
        addresses = [_address(info[4][0]) for info in infos]
        if not addresses:
            raise DatasetRejected(f"{field}: the host {host} could not be resolved", param=field)
    if host not in allow_names:
        for address in addresses:
            if not (is_public_address(address) or _in_networks(address, allow_networks)):
                raise DatasetRejected(
                    f"{field}: the host {host} resolves to a non-public address ({address})", param=field
                )
    return ParsedUri(uri=uri, scheme="https", host=host, addresses=tuple(str(a) for a in addresses))


def is_public_address(address: IPAddress) -> bool:
    """True when ``address``, and every IPv4 address embedded in it, is global unicast."""
    return all(a.is_global and not a.is_multicast for a in _with_embedded(address))


def _with_embedded(address: IPAddress) -> list[IPAddress]:
    """``address`` and the IPv4 addresses an IPv6 one carries (packets to it reach those)."""
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            candidates.append(address.sixtofour)
        if address.teredo is not None:
            candidates.extend(address.teredo)
        if address in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return candidates


def _in_networks(address: IPAddress, networks: Sequence[Network]) -> bool:
    # Same version only: ipaddress compares the integers, so an IPv6 address "fits" IPv4 networks.
    return any(a.version == n.version and a in n for a in _with_embedded(address) for n in networks)


def _ip_literal(host: str, netloc: str, field: str) -> IPAddress | None:
    """The address when ``host`` is written as one: dotted-quad IPv4, or IPv6 in brackets."""
    if "[" in netloc:
        try:
            if "%" in host:  # a zone id only means something on the local link
                raise ValueError("zone id")
            return ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise DatasetRejected(f"{field}: the host is not a valid IPv6 literal", param=field) from exc
    try:
        return ipaddress.IPv4Address(host)  # strict: no "127.1", no octal "0177.0.0.1", no "0x7f000001"
    except ValueError:
        return None


def _is_hostname(host: str) -> bool:
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.split(".")
    return (
        len(ascii_host) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not _NUMERIC_LABEL.match(labels[-1])
    )


def _address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # link-local IPv6 answers carry a zone id


def _allow_list(entries: Sequence[str]) -> tuple[set[str], list[Network]]:
    names: set[str] = set()
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return names, networks
