"""Labelled datasets: read any supported URI and format into :class:`LabeledData`, and split it.

A URI is a local path, a ``file://`` URL or any fsspec URL (``https://``, ``s3://``). Remote data is
copied into a temporary folder first (``http(s)://`` through the standard library when fsspec's http
backend, aiohttp, is not installed; redirects are then refused). Archives (``.zip``, ``.tar.gz``,
``.tgz``, ``.tar``) are extracted there too, and every image is decoded into memory, so nothing on
disk is needed once loading returns. Formats are described in :mod:`grft_core.data.formats`.
"""

from __future__ import annotations

import posixpath
import random
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal
from urllib.parse import urlsplit

from grft_core.data.formats import (
    IMAGE_SUFFIXES,
    TABULAR_SUFFIXES,
    RawRecords,
    decode_image,
    is_saved_dataset,
    is_visible,
    read_image_folder,
    read_saved_dataset,
    read_table,
    sort_classes,
)
from grft_core.errors import DatasetRejected

__all__ = ["MAX_DATASET_BYTES", "LabeledData", "load_dataset", "load_train_val", "stratified_split"]

# Upper bound on what one dataset may occupy once downloaded or extracted; it keeps a hostile archive
# or URL from filling the worker's disk.
MAX_DATASET_BYTES = 4 * 1024**3
_DOWNLOAD_TIMEOUT_S = 60.0
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


def load_dataset(uri: str, *, max_items: int | None = None) -> LabeledData:
    """Load a labelled dataset from ``uri`` (a path, ``file://`` or fsspec URL).

    With ``max_items``, keep at most that many examples, taken in turn from each class so that a small
    cap still covers every class. Returns the examples with images decoded to RGB. Raises
    :class:`DatasetRejected` for a missing or empty file, an unknown format, bad columns or rows, a
    corrupt image, an archive member escaping its folder, a remote backend that is not installed, or
    fewer than 2 classes; :class:`ValueError` when ``max_items`` is below 1.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    with tempfile.TemporaryDirectory(prefix="grft-data-", ignore_cleanup_errors=True) as work:
        workdir = Path(work)
        local = _local_copy(uri, workdir)
        records = _read_path(local, _display_name(uri, local), workdir)
        return _to_labeled(records, uri, max_items)


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
) -> tuple[LabeledData, LabeledData]:
    """Load the training data and a validation set, from ``val_uri`` or split off ``train_uri``.

    With ``val_uri`` both are loaded (``max_items`` applies to each), must hold the same modality and
    label set, and the val labels are mapped onto the train classes. Without it, a seeded
    :func:`stratified_split` holds out ``val_fraction``. Returns (train, val). Raises
    :class:`DatasetRejected` for anything :func:`load_dataset` rejects, label sets that differ, or a
    dataset too small to hold anything out; :class:`ValueError` for a bad ``val_fraction``.
    """
    train = load_dataset(train_uri, max_items=max_items)
    if val_uri is None:
        train_part, val_part = stratified_split(train, val_fraction, seed)
        if len(val_part) == 0:
            raise DatasetRejected(
                f"{train_uri} is too small to hold out a validation split: every class has one example",
                param="val_fraction",
            )
        return train_part, val_part
    val = load_dataset(val_uri, max_items=max_items)
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


def _to_labeled(records: RawRecords, source: str, max_items: int | None) -> LabeledData:
    keep: Sequence[int] = range(len(records.labels))
    if max_items is not None:
        order = {name: index for index, name in enumerate(sort_classes(records.labels))}
        keep = _round_robin([order[name] for name in records.labels], len(order), max_items)
    names = [records.labels[i] for i in keep]
    classes = sort_classes(names)
    if len(classes) < 2:
        raise DatasetRejected(
            f"{records.name} needs at least 2 classes, found {len(classes)}: {classes}", param="label"
        )
    position = {name: index for index, name in enumerate(classes)}
    items: list[Any] = []
    for i in keep:
        item = records.items[i]
        if isinstance(item, str):
            items.append(item)
        else:
            where = records.where[i]
            items.append(decode_image(item, f"{records.name} {where}" if records.by_row else where, where))
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


def _read_path(path: Path, display: str, workdir: Path) -> RawRecords:
    if not path.exists():
        raise DatasetRejected(f"dataset not found: {display}", param=display)
    if path.is_dir():
        return _read_dir(path, display)
    if path.stat().st_size == 0:
        raise DatasetRejected(f"dataset file is empty: {display}", param=display)
    name = path.name.lower()
    if name.endswith(_ARCHIVE_SUFFIXES):
        target = workdir / "extracted"
        target.mkdir()
        if name.endswith(".zip"):
            _extract_zip(path, target, display)
        else:
            _extract_tar(path, target, display)
        return _read_dir(_archive_root(target), display)
    kind = TABULAR_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DatasetRejected(
            f"unknown dataset format for {display}: expected a folder, .zip, .tar.gz, .tgz, .tar, "
            f"{', '.join(TABULAR_SUFFIXES)} or a save_to_disk folder",
            param=display,
        )
    return read_table(path, kind)


def _read_dir(path: Path, display: str) -> RawRecords:
    if is_saved_dataset(path):
        return read_saved_dataset(path)
    visible = [p for p in path.iterdir() if is_visible(p)]
    if not visible:
        raise DatasetRejected(f"dataset folder is empty: {display}", param=display)
    tables = [p for p in visible if p.is_file() and p.suffix.lower() in TABULAR_SUFFIXES]
    if len(tables) == 1 and not any(p.is_dir() for p in visible):
        return read_table(tables[0], TABULAR_SUFFIXES[tables[0].suffix.lower()])
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


def _extract_zip(archive: Path, target: Path, display: str) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            total = 0
            for member in bundle.infolist():
                name = member.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                    raise DatasetRejected(
                        f"archive member {member.filename!r} escapes the dataset folder",
                        param=member.filename,
                    )
                total += member.file_size
            _check_size(total, display)
            bundle.extractall(target)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError) as exc:
        raise DatasetRejected(f"{display} is not a readable zip archive: {exc}", param=display) from exc


def _extract_tar(archive: Path, target: Path, display: str) -> None:
    try:
        with tarfile.open(archive) as bundle:
            _check_size(sum(member.size for member in bundle.getmembers()), display)
            # The "data" filter refuses absolute names, "..", links leaving the folder and device files.
            bundle.extractall(target, filter="data")
    except tarfile.FilterError as exc:
        member = exc.tarinfo.name
        raise DatasetRejected(
            f"archive member {member!r} escapes the dataset folder: {exc}", param=member
        ) from exc
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise DatasetRejected(f"{display} is not a readable tar archive: {exc}", param=display) from exc


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

    name = PurePosixPath(parts.path).name or "download"
    if parts.scheme in ("http", "https"):
        # A plain GET that refuses redirects and caps size and time; fsspec's http backend follows
        # redirects, which would let a URI that passed a host check lead somewhere else.
        return _http_get(uri, workdir / name)
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
    except DatasetRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - backends (botocore, aiohttp) raise their own error types
        raise DatasetRejected(f"cannot download {uri}: {type(exc).__name__}: {exc}", param=uri) from exc


def _copy_remote_dir(fs: Any, remote: str, target: Path, uri: str) -> Path:
    base = remote.rstrip("/")
    total = 0
    for path in sorted(fs.find(base)):
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
            written += len(chunk)
            _check_size(written, uri)
            sink.write(chunk)
    return target


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead to an address the URI check never saw, so a 3xx is an error instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _http_get(uri: str, target: Path) -> Path:
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(uri, headers={"User-Agent": "grft"})
    try:
        with opener.open(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            return _copy_stream(response, target, uri)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 410):
            raise DatasetRejected(f"dataset not found: {uri} (HTTP {exc.code})", param=uri) from exc
        raise DatasetRejected(f"cannot download {uri}: HTTP {exc.code} {exc.reason}", param=uri) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetRejected(f"cannot download {uri}: {exc}", param=uri) from exc
