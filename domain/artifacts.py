"""The artifact store: an fsspec URL (a local folder by default, ``s3://`` when configured).

Writes are whole or absent: data goes to a temporary key that is renamed (or, on object stores,
copied) to its final key only after the last byte, and removed on any failure.
"""

from __future__ import annotations

import hashlib
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from domain.errors import PayloadTooLarge

CHUNK = 1024 * 1024


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
        tmp = self.path(f"tmp/{uuid.uuid4().hex}")
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
        staging = f"tmp/{uuid.uuid4().hex}"
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
        if self.fs.exists(self.path(key)):
            self.fs.rm(self.path(key), recursive=True)

    def local_path(self, key: str) -> Path | None:
        """The key's local path when the store is a local folder (lets training read it in place)."""
        if "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)):
            return Path(self.path(key))
        return None
