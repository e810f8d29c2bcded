"""The artifact store: an fsspec URL (a local folder by default, ``s3://`` when configured).

Writes are whole or absent: data goes to a temporary key that is renamed (or, on object stores,
copied) to its final key only after the last byte, and removed on any failure.

Layout: ``files/<tenant>/<id>`` (uploads), ``adapters/<id>/`` (trained adapters),
``jobs/<job>/checkpoints/`` (a job's checkpoints, see ``job_key``), ``tmp/<random>`` (writes in progress,
or left by a process that died mid-write: ``domain.gc`` removes old ones).
"""

from __future__ import annotations

import errno
import hashlib
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from domain.errors import PayloadTooLarge

CHUNK = 1024 * 1024
_DELETE_ATTEMPTS = 50
TMP = "tmp"
JOBS = "jobs"


def job_key(job_id: str) -> str:
    """The folder of everything a job stores besides its adapter (its checkpoints)."""
    return f"{JOBS}/{job_id}"


def checkpoints_key(job_id: str) -> str:
    """Where a job's checkpoints live."""
    return f"{job_key(job_id)}/checkpoints"


class ArtifactStore:
    """Keys are relative paths (``files/<tenant>/<id>``); ``uri(key)`` gives the full URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        if self.fs.protocol in ("file", "local") or "file" in getattr(self.fs, "protocol", ()):
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> str:
        return posixpath.join(self.root, key)

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    def put_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        """Write ``chunks`` to ``key`` whole or not at all; returns ``(bytes, sha256)``.

        Raises:
            PayloadTooLarge: more than ``max_bytes`` arrived (nothing is left behind).
        """
        tmp = self.path(f"{TMP}/{uuid.uuid4().hex}")
        digest, size = hashlib.sha256(), 0
        self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"upload exceeds the {max_bytes:,}-byte limit", param="file")
                    digest.update(chunk)
                    out.write(chunk)
            self.fs.makedirs(posixpath.dirname(self.path(key)), exist_ok=True)
            self.fs.mv(tmp, self.path(key))
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        return size, digest.hexdigest()

    def put_file(self, key: str, source: BinaryIO, max_bytes: int) -> tuple[int, str]:
        """``put_stream`` over a file object."""
        return self.put_stream(key, iter(lambda: source.read(CHUNK), b""), max_bytes)

    def put_folder(self, key: str, folder: Path) -> str:
        """Upload a local folder to ``key`` (replacing it), staged then moved; returns its URI."""
        staging = f"{TMP}/{uuid.uuid4().hex}"
        try:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                target = self.path(f"{staging}/{file.relative_to(folder).as_posix()}")
                self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
                self.fs.put_file(str(file), target)
            if self.fs.exists(self.path(key)):
                self.fs.rm(self.path(key), recursive=True)
            self.fs.makedirs(posixpath.dirname(self.path(key)), exist_ok=True)
            self.fs.mv(self.path(staging), self.path(key), recursive=True)
        except BaseException:
            if self.fs.exists(self.path(staging)):
                self.fs.rm(self.path(staging), recursive=True)
            raise
        return self.uri(key)

    def get_folder(self, key: str, dest: Path) -> Path:
        """Download the folder at ``key`` into ``dest`` (created)."""
        dest.mkdir(parents=True, exist_ok=True)
        base = self.path(key).rstrip("/")
        for remote in self.fs.find(base):
            local = dest / posixpath.relpath(remote, base)
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local))
        return dest

    def open(self, key: str) -> Any:
        return self.fs.open(self.path(key), "rb")

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def delete(self, key: str) -> None:
        """Remove ``key`` (a file or a folder) if it is there; safe to race with another deleter."""
        path = self.path(key)
        # Two recursive removals of one tree trip over each other: one finds a file the other just
        # removed (ENOENT), or a folder the other is still emptying (ENOTEMPTY). Each retry starts
        # from what is left, so the tree shrinks every round; a persistent error is a real one.
        for _ in range(_DELETE_ATTEMPTS):
            try:
                if not self.fs.exists(path):
                    return
                self.fs.rm(path, recursive=True)
                return
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        if self.fs.exists(path):
            raise OSError(f"could not remove {self.uri(key)}")

    def key_of(self, uri: str) -> str | None:
        """The key of a URI of this store (``uri(key)``), None for a URI elsewhere."""
        prefix = self.url + "/"
        if not uri.startswith(prefix):
            return None
        key = uri[len(prefix) :].strip("/")
        return key if key and ".." not in key.split("/") else None

    def children(self, key: str) -> list[str]:
        """The names directly under the folder ``key`` (none when it does not exist)."""
        path = self.path(key).rstrip("/")
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        names = (posixpath.basename(str(e).rstrip("/")) for e in entries)
        return sorted(n for n in names if n and posixpath.join(path, n) != path)

    def modified(self, key: str) -> datetime | None:
        """The last time anything under ``key`` was written (a file, or the newest file of a folder);
        None when it is gone or the store does not say."""
        path = self.path(key)
        try:
            found: dict[str, dict[str, Any]] = self.fs.find(path, withdirs=True, detail=True)
            if not found:
                found = {path: self.fs.info(path)}
        except FileNotFoundError:
            return None
        times = [t for t in (_mtime(info) for info in found.values()) if t is not None]
        return max(times) if times else None

    def local_path(self, key: str) -> Path | None:
        """The key's local path when the store is a local folder (lets training read it in place)."""
        if "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)):
            return Path(self.path(key))
        return None


def _mtime(info: dict[str, Any]) -> datetime | None:
    """A file's modification time from fsspec's ``info``: ``mtime`` (local, seconds or a datetime),
    ``LastModified`` (S3), ``last_modified`` or ``updated`` (other object stores)."""
    for name in ("mtime", "LastModified", "last_modified", "updated"):
        value = info.get(name)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return None
