"""Adapters: read, list, delete, and download as a tar streamed straight from the artifact store.

An adapter row points at its folder in the artifact store (``adapters/<id>/`` holding
``adapter_config.json``, ``adapter_model.safetensors`` and ``metrics.json``). Downloads are built
on the fly: a tar header, then the file's bytes in chunks, so no archive is ever staged on disk or
held in memory whole. The PEFT export is the exception: PEFT writes its own files, so that folder is
built in a temporary directory that the stream removes when it ends.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from api.adapters import schemas
from api.errors import NotFound
from domain.adapters import repository
from domain.adapters.models import Adapter
from domain.artifacts import CHUNK, ArtifactStore
from domain.auth.models import Tenant
from domain.jobs import model_ids
from domain.jobs.checkpoint_adapters import checkpoint_adapter
from grft_core import ModelRegistry
from grft_core.adapters.format import CONFIG_NAME
from grft_core.pipeline import export_peft

# Tar pads every member to 512-byte blocks, ends with two zero blocks and rounds the archive up to a
# 20-block record: the layout ``tarfile`` itself writes, so every tar reader accepts the stream.
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


def get_adapter(session: Session, tenant: Tenant, adapter_id: str) -> Adapter:
    """The tenant's adapter, by its id or by its fine-tuned model id (``ft:…``, an alias); ``NotFound``
    for a missing id and for another tenant's (indistinguishable)."""
    row = None
    if adapter_id.startswith(model_ids.PREFIX):
        resolved = model_ids.resolve(session, tenant.id, adapter_id)
        row = resolved.adapter if resolved is not None else None
    else:
        row = repository.get(session, tenant.id, adapter_id)
    if row is None:
        raise NotFound(f"no adapter with id {adapter_id!r}", param="adapter_id")
    return row


def get_model_adapter(
    session: Session, tenant: Tenant, model_id: str, store: ArtifactStore, registry: ModelRegistry
) -> Adapter:
    """Like ``get_adapter``, and a checkpoint id (``ft:…:ckpt-step-N``, ``ftjob-…:ckpt-step-N``) names
    the adapter made from that checkpoint: an unsaved row (id: the checkpoint's) for downloads and
    inference, whose files are built on first use (``domain.jobs.checkpoint_adapters``).

    Raises:
        NotFound: no such adapter, model or checkpoint of this tenant, or the checkpoint's files are gone.
        BadRequest: the checkpoint's job is not a GRFT job.
    """
    if ":ckpt-step-" not in model_id:
        return get_adapter(session, tenant, model_id)
    resolved = model_ids.resolve(session, tenant.id, model_id)
    if resolved is None or resolved.checkpoint is None or resolved.job is None:
        raise NotFound(f"no checkpoint with id {model_id!r}", param="adapter_id")
    job, checkpoint = resolved.job, resolved.checkpoint
    key = checkpoint_adapter(session, store, registry, job, checkpoint)
    config = json.loads(store.open(f"{key}/{CONFIG_NAME}").read())
    size = sum(m.size for m in store_members(store, key))
    # Never added to the session: it describes the checkpoint's adapter, it is not a stored adapter.
    return Adapter(
        id=checkpoint.id,
        tenant_id=tenant.id,
        job_id=job.id,
        base_model=job.model,
        method="grft",
        uri=store.uri(key),
        bytes=size,
        config=config,
        created_at=checkpoint.created_at,
    )


def to_schema(row: Adapter) -> schemas.Adapter:
    """The wire object; labels, parameter count and metrics come from the adapter's config document."""
    config: dict[str, Any] = row.config or {}
    metrics = config.get("metrics")
    trainable = config.get("trainable_params")
    if trainable is None and isinstance(metrics, dict):
        trainable = metrics.get("trainable_params")
    return schemas.Adapter(
        id=row.id,
        created_at=int(row.created_at.timestamp()),
        base_model=row.base_model,
        method=row.method,
        bytes=row.bytes,
        job_id=row.job_id,
        trainable_params=int(trainable) if isinstance(trainable, int | float) else None,
        labels=[str(label) for label in config.get("labels", [])],
        metrics=metrics if isinstance(metrics, dict) else {},
    )


def list_adapters(session: Session, tenant: Tenant, *, after: str | None, limit: int) -> schemas.AdapterList:
    """A cursor page, newest first (``after`` is the last id of the previous page)."""
    cursor = None
    if after is not None:
        cursor = repository.get(session, tenant.id, after)
        if cursor is None:
            raise NotFound(f"no adapter with id {after!r} to list after", param="after")
    rows, has_more = repository.page(session, tenant.id, after=cursor, limit=limit)
    return schemas.AdapterList.of([to_schema(row) for row in rows], has_more)


def artifact_key(store: ArtifactStore, row: Adapter) -> str:
    """The store key of the adapter's folder.

    Rows hold full URIs; a row written before the store moved (another bucket, another mount) falls
    back to the documented layout, ``adapters/<id>``.
    """
    prefix = store.url + "/"
    if row.uri.startswith(prefix):
        return row.uri[len(prefix) :].strip("/")
    return f"adapters/{row.id}"


def delete_adapter(session: Session, store: ArtifactStore, tenant: Tenant, adapter_id: str) -> None:
    """Delete the row, then its files.

    The row goes first (flushed, committed by the request): if removing the files fails, the error
    rolls the row back too, so the adapter stays listed and a retried DELETE finishes the job instead of
    leaving files that nothing points to.
    """
    row = get_adapter(session, tenant, adapter_id)
    key = artifact_key(store, row)
    repository.delete(session, row)
    store.delete(key)


# --- downloads ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One file of an archive: its name inside the tar, its size, and how to read it."""

    name: str
    size: int
    open: Callable[[], BinaryIO]


def tar_stream(members: Iterable[Member], mtime: int) -> Iterator[bytes]:
    """An uncompressed tar of ``members``, produced chunk by chunk.

    Raises:
        OSError: a file changed size while it was being sent (the response is cut short rather than
            ending in a well-formed archive with wrong content).
    """
    total = 0
    for member in members:
        info = tarfile.TarInfo(member.name)
        info.size, info.mtime, info.mode, info.type = member.size, mtime, 0o644, tarfile.REGTYPE
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        yield header
        sent = 0
        with member.open() as handle:
            while chunk := handle.read(CHUNK):
                sent += len(chunk)
                if sent > member.size:
                    break
                yield chunk
        if sent != member.size:
            raise OSError(f"{member.name} changed size while being sent")
        padding = -member.size % BLOCK
        yield b"\0" * padding
        total += len(header) + member.size + padding
    end = 2 * BLOCK
    end += -(total + end) % RECORD
    yield b"\0" * end


def store_members(store: ArtifactStore, key: str) -> list[Member]:
    """The files under ``key`` in the store, sorted by name.

    Raises:
        NotFound: the folder holds no file (the row outlived its files).
    """
    base = store.path(key).rstrip("/")
    found: dict[str, Any] = store.fs.find(base, detail=True) if store.exists(key) else {}
    members = [
        Member(name=posixpath.relpath(path, base), size=int(info["size"]), open=_opener(store, path))
        for path, info in sorted(found.items())
        if info.get("type", "file") == "file"
    ]
    if not members:
        raise NotFound(f"the files of adapter folder {key!r} are missing", param="adapter_id")
    return members


def _opener(store: ArtifactStore, path: str) -> Callable[[], BinaryIO]:
    def open_remote() -> BinaryIO:
        handle: BinaryIO = store.fs.open(path, "rb")
        return handle

    return open_remote


def _local_opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")


def local_members(folder: Path) -> list[Member]:
    """The files of a local folder, sorted by name."""
    return [
        Member(name=p.relative_to(folder).as_posix(), size=p.stat().st_size, open=_local_opener(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def content(
    store: ArtifactStore, row: Adapter, fmt: schemas.ContentFormat, registry: ModelRegistry
) -> Iterator[bytes]:
    """The adapter as a tar stream: its folder as stored, or its PEFT LoRA export.

    Everything that can fail with a client error (missing files, a method that has no LoRA form, an
    unregistered base) fails here, before the first byte, so the error still renders as JSON.

    Raises:
        NotFound: the adapter's files are missing.
        AdapterError: ``peft_lora`` for an adapter that is not GRFT or selects no matrix.
        ModelNotFound, FingerprintMismatch: the base model is not (or no longer) the registered one.
    """
    key = artifact_key(store, row)
    mtime = int(row.created_at.timestamp())
    if fmt == "grft":
        return tar_stream(store_members(store, key), mtime)
    workdir = Path(tempfile.mkdtemp(prefix="grft-peft-"))
    try:
        local = store.local_path(key)
        if local is None or not local.is_dir():
            store_members(store, key)  # a clear NotFound instead of an empty download
            local = store.get_folder(key, workdir / "adapter")
        out = export_peft(local, workdir / "peft_lora", registry)
        members = local_members(out)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    stream = _then_remove(tar_stream(members, mtime), workdir)
    # A generator that never started does not run its ``finally``: if the response is dropped before
    # the first byte, the folder goes when the stream is collected.
    weakref.finalize(stream, shutil.rmtree, workdir, True)
    return stream


def _then_remove(chunks: Iterator[bytes], workdir: Path) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
