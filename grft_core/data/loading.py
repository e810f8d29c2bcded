"""Labelled datasets: read any supported URI and format into :class:`LabeledData`, and split it.

A URI is a local path, a ``file://`` URL or any fsspec URL (``https://``, ``s3://``). Remote data is
copied into a temporary folder first (``http(s)://`` through the standard library, refusing redirects,
connecting only to addresses resolved once: see :func:`fetch_https`).
Archives (``.zip``, ``.tar.gz``, ``.tgz``, ``.tar``) are extracted there too, and every image is decoded
into memory, so nothing on disk is needed once loading returns. Formats are described in
:mod:`grft_core.data.formats`.

Which URIs may be read at all is the caller's policy, not this module's (a service checks them before
calling). Error messages name the URI and the kind of failure, never text a remote server sent.
"""

from __future__ import annotations

import http.client
import ipaddress
import posixpath
import random
import socket
import ssl
import tarfile
import tempfile
import time
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal
from urllib.parse import urlsplit

from grft_core.cancel import ShouldStop, check_stop, stop_checks
from grft_core.data.formats import (
    IMAGE_SUFFIXES,
    TABULAR_SUFFIXES,
    DataLimits,
    RawRecords,
    decode_image,
    is_saved_dataset,
    is_visible,
    read_image_folder,
    read_saved_dataset,
    read_table,
    sort_classes,
)
from grft_core.errors import DatasetRejected, TrainingInterrupted

__all__ = [
    "MAX_DATASET_BYTES",
    "LabeledData",
    "fetch_https",
    "load_dataset",
    "load_train_val",
    "stratified_split",
]

# Upper bound on what one dataset may occupy once downloaded or extracted; it keeps a hostile archive
# or URL from filling the worker's disk.
MAX_DATASET_BYTES = 4 * 1024**3
# Every archive member counts at least a filesystem block toward the extraction budget, so an archive
# of millions of empty files is refused like one of a few huge ones.
_MEMBER_BYTES = 4096
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
_ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


@dataclass
class LabeledData:
    """Labelled examples.

    ``items`` hold RGB :class:`PIL.Image.Image` objects, already loaded, when ``modality`` is
    ``"image"`` and strings when it is ``"text"``; ``labels[i]`` indexes ``classes``, the class names in
    sorted order; ``source`` is the URI the examples were read from.
    """

    modality: Literal["image", "text"]
    items: list[Any]
    labels: list[int]
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> LabeledData:
        """Return the examples at ``indices`` (in that order), keeping the classes and the source."""
        return replace(self, items=[self.items[i] for i in indices], labels=[self.labels[i] for i in indices])


def load_dataset(
    uri: str,
    *,
    max_items: int | None = None,
    limits: DataLimits | None = None,
    should_stop: ShouldStop | None = None,
) -> LabeledData:
    """Load a labelled dataset from ``uri`` (a path, ``file://`` or fsspec URL).

    With ``max_items``, keep at most that many examples, taken in turn from each class so that a small
    cap still covers every class. ``limits`` (default :class:`DataLimits`) bound pixels per image,
    characters per text, bytes per record and what an archive may expand to. Returns the examples with
    images decoded to RGB. Raises :class:`DatasetRejected` for a missing or empty file, an unknown
    format, bad columns or rows, a corrupt image, anything over ``limits`` (the message names the
    limit), an archive member escaping its folder, a remote backend that is not installed, or fewer
    than 2 classes; :class:`ValueError` when ``max_items`` is below 1; :class:`TrainingInterrupted`
    when ``should_stop`` (asked per download chunk, archive member, record and decoded image; see
    :mod:`grft_core.cancel`) returns True.
    """
    limits = limits or DataLimits()
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    with (
        stop_checks(should_stop),
        tempfile.TemporaryDirectory(prefix="grft-data-", ignore_cleanup_errors=True) as work,
    ):
        check_stop()
        workdir = Path(work)
        local = _local_copy(uri, workdir)
        records = _read_path(local, _display_name(uri, local), workdir, limits)
        return _to_labeled(records, uri, max_items, limits)


def stratified_split(data: LabeledData, val_fraction: float, seed: int) -> tuple[LabeledData, LabeledData]:
    """Split ``data`` into (train, val), holding out about ``val_fraction`` of each class.

    Every class with at least 2 examples gives at least 1 to val and keeps at least 1 in train; a class
    with a single example stays in train. The choice depends only on ``seed``; both parts keep the
    original order and all ``classes``. Raises :class:`ValueError` unless ``0 < val_fraction < 1``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(data.labels):
        by_class.setdefault(label, []).append(index)
    held_out: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, int(len(members) * val_fraction + 0.5)))
        held_out.update(rng.sample(members, count))
    train = [i for i in range(len(data)) if i not in held_out]
    return data.subset(train), data.subset(sorted(held_out))


def load_train_val(
    train_uri: str,
    val_uri: str | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_items: int | None = None,
    limits: DataLimits | None = None,
    should_stop: ShouldStop | None = None,
) -> tuple[LabeledData, LabeledData]:
    """Load the training data and a validation set, from ``val_uri`` or split off ``train_uri``.

    With ``val_uri`` both are loaded (``max_items`` applies to each), must hold the same modality and
    label set, and the val labels are mapped onto the train classes; ``limits`` apply to each. Without
    it, a seeded :func:`stratified_split` holds out ``val_fraction``. Returns (train, val). Raises
    :class:`DatasetRejected` for anything :func:`load_dataset` rejects, label sets that differ, or a
    dataset too small to hold anything out; :class:`ValueError` for a bad ``val_fraction``;
    :class:`TrainingInterrupted` when ``should_stop`` returns True (see :func:`load_dataset`).
    """
    train = load_dataset(train_uri, max_items=max_items, limits=limits, should_stop=should_stop)
    if val_uri is None:
        train_part, val_part = stratified_split(train, val_fraction, seed)
        if len(val_part) == 0:
            raise DatasetRejected(
                f"{train_uri} is too small to hold out a validation split: every class has one example",
                param="val_fraction",
            )
        return train_part, val_part
    val = load_dataset(val_uri, max_items=max_items, limits=limits, should_stop=should_stop)
    if val.modality != train.modality:
        raise DatasetRejected(
            f"the training data holds {train.modality} but the validation data holds {val.modality}",
            param=val_uri,
        )
    only_train = sorted(set(train.classes) - set(val.classes))
    only_val = sorted(set(val.classes) - set(train.classes))
    if only_train or only_val:
        raise DatasetRejected(
            "training and validation label sets differ: "
            f"only in training: {only_train or 'none'}; only in validation: {only_val or 'none'}",
            param="label",
        )
    position = {name: index for index, name in enumerate(train.classes)}
    remapped = [position[val.classes[label]] for label in val.labels]
    return train, replace(val, labels=remapped, classes=list(train.classes))


def _to_labeled(records: RawRecords, source: str, max_items: int | None, limits: DataLimits) -> LabeledData:
    keep: Sequence[int] = range(len(records.labels))
    if max_items is not None:
        order = {name: index for index, name in enumerate(sort_classes(records.labels))}
        keep = _round_robin([order[name] for name in records.labels], len(order), max_items)
    names = [records.labels[i] for i in keep]
    classes = sort_classes(names)
    if len(classes) < 2:
        raise DatasetRejected(
            # The count, not the names: with under 2 classes this may be no dataset at all.
            f"{records.name} needs at least 2 classes, found {len(classes)}",
            param="label",
        )
    position = {name: index for index, name in enumerate(classes)}
    items: list[Any] = []
    for i in keep:
        check_stop()
        item = records.items[i]
        if isinstance(item, str):
            items.append(item)
        else:
            where = records.where[i]
            what = f"{records.name} {where}" if records.by_row else where
            image = decode_image(
                item, what, where, max_pixels=limits.max_image_pixels, reduce_to=limits.image_side
            )
            items.append(image)
    return LabeledData(records.modality, items, [position[name] for name in names], classes, source)


def _round_robin(labels: list[int], class_count: int, max_items: int) -> list[int]:
    queues: list[list[int]] = [[] for _ in range(class_count)]
    for index, label in enumerate(labels):
        queues[label].append(index)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(max_items, len(labels)):
        for queue in queues:
            if depth < len(queue) and len(chosen) < max_items:
                chosen.append(queue[depth])
        depth += 1
    return sorted(chosen)


def _display_name(uri: str, local: Path) -> str:
    return local.name if "://" in uri else uri


def _read_path(path: Path, display: str, workdir: Path, limits: DataLimits) -> RawRecords:
    if not path.exists():
        raise DatasetRejected(f"dataset not found: {display}", param=display)
    if path.is_dir():
        return _read_dir(path, display, limits)
    if path.stat().st_size == 0:
        raise DatasetRejected(f"dataset file is empty: {display}", param=display)
    name = path.name.lower()
    if name.endswith(_ARCHIVE_SUFFIXES):
        target = workdir / "extracted"
        target.mkdir()
        # Read the module constant at call time: it is the disk cap of every copy, downloads included.
        budget = min(MAX_DATASET_BYTES, limits.max_extract_bytes)
        if name.endswith(".zip"):
            _extract_zip(path, target, display, budget)
        else:
            _extract_tar(path, target, display, budget)
        return _read_dir(_archive_root(target), display, limits)
    kind = TABULAR_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DatasetRejected(
            f"unknown dataset format for {display}: expected a folder, .zip, .tar.gz, .tgz, .tar, "
            f"{', '.join(TABULAR_SUFFIXES)} or a save_to_disk folder",
            param=display,
        )
    return read_table(path, kind, limits)


def _read_dir(path: Path, display: str, limits: DataLimits) -> RawRecords:
    if is_saved_dataset(path):
        return read_saved_dataset(path, limits)
    visible = [p for p in path.iterdir() if is_visible(p)]
    if not visible:
        raise DatasetRejected(f"dataset folder is empty: {display}", param=display)
    tables = [p for p in visible if p.is_file() and p.suffix.lower() in TABULAR_SUFFIXES]
    if len(tables) == 1 and not any(p.is_dir() for p in visible):
        return read_table(tables[0], TABULAR_SUFFIXES[tables[0].suffix.lower()], limits)
    return read_image_folder(path, display)


def _archive_root(extracted: Path) -> Path:
    # Archives often wrap the data in one top folder ("digits/0/…"): step into it, but not into a
    # lone class folder, recognised by the images directly inside it.
    root = extracted
    while True:
        visible = [p for p in root.iterdir() if is_visible(p)]
        if len(visible) != 1 or not visible[0].is_dir():
            return root
        inner = visible[0]
        if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in inner.iterdir() if is_visible(p)):
            return root
        root = inner


def _extract_zip(archive: Path, target: Path, display: str, budget: int) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            declared = 0
            for member in members:
                name = member.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                    raise DatasetRejected(
                        f"archive member {member.filename!r} escapes the dataset folder",
                        param=member.filename,
                    )
                declared += member.file_size + _MEMBER_BYTES
            # The sizes the archive declares refuse an honest bomb before anything is written; the
            # bytes counted while writing refuse one whose headers lie.
            _check_extracted(declared, display, budget)
            written = 0
            for member in members:
                check_stop()
                destination = target.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                written += _MEMBER_BYTES
                with bundle.open(member) as source, destination.open("wb") as sink:
                    while chunk := source.read(_CHUNK):
                        check_stop()
                        written += len(chunk)
                        _check_extracted(written, display, budget)
                        sink.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError) as exc:
        raise DatasetRejected(f"{display} is not a readable zip archive: {exc}", param=display) from exc


def _extract_tar(archive: Path, target: Path, display: str, budget: int) -> None:
    written = 0

    def within_budget(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        # Called as the stream reaches each member, before its bytes are written: tar sizes are exact.
        nonlocal written
        check_stop()
        # The "data" filter refuses absolute names, "..", links leaving the folder and device files.
        kept = tarfile.data_filter(member, path)
        written += _MEMBER_BYTES + (kept.size if kept is not None and kept.isfile() else 0)
        _check_extracted(written, display, budget)
        return kept

    try:
        with tarfile.open(archive) as bundle:
            bundle.extractall(target, filter=within_budget)
    except tarfile.FilterError as exc:
        member = exc.tarinfo.name
        raise DatasetRejected(
            f"archive member {member!r} escapes the dataset folder: {exc}", param=member
        ) from exc
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise DatasetRejected(f"{display} is not a readable tar archive: {exc}", param=display) from exc


def _check_extracted(total: int, display: str, budget: int) -> None:
    if total > budget:
        raise DatasetRejected(
            f"{display} expands to more than the limit of {budget:,} bytes (max_extract_bytes)",
            param=display,
        )


def _check_size(total: int, display: str) -> None:
    if total > MAX_DATASET_BYTES:
        raise DatasetRejected(
            f"{display} holds {total} bytes, more than the limit of {MAX_DATASET_BYTES}", param=display
        )


def _local_copy(uri: str, workdir: Path) -> Path:
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
        return _fetch(uri, _resolve_once(uri), workdir)
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
        return _fetch(url, addresses, folder, max_bytes, timeout, deadline, context)


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


def _fetch(
    url: str,
    addresses: Sequence[str],
    folder: Path,
    max_bytes: int | None = None,
    timeout: float = _DOWNLOAD_TIMEOUT_S,
    deadline: float = _DOWNLOAD_DEADLINE_S,
    context: ssl.SSLContext | None = None,
) -> Path:
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
    limit = MAX_DATASET_BYTES if max_bytes is None else max_bytes  # read at call time (tests lower it)
    connection: _PinnedHTTPConnection | _PinnedHTTPSConnection
    if parts.scheme == "https":
        tls = context or ssl.create_default_context()
        connection = _PinnedHTTPSConnection(host, port, pinned, timeout, tls)
    else:
        connection = _PinnedHTTPConnection(host, port, pinned, timeout)
    target = folder / _local_name(parts.path)
    ends = time.monotonic() + deadline
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
