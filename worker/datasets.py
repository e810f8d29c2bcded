"""Where a job's data comes from: local copies of its training and validation files for the loader.

An uploaded file (``file-…``) is linked or copied out of the artifact store; a dataset URI is checked
again (``domain.dataset_uris``) and, for ``https://``, downloaded from exactly the addresses the check
approved. Also the library's read limits from the settings, and the tenant's names for the data.
"""

from __future__ import annotations

import socket
from pathlib import Path

from sqlalchemy.orm import Session

from domain.artifacts import ArtifactStore
from domain.dataset_uris import Resolver, check_dataset_uri
from domain.db import session_scope
from domain.jobs.specs import JobSpec, tenant_file
from domain.settings import Settings
from grft_core.cancel import ShouldStop, check_stop, stop_checks
from grft_core.data import DataLimits
from grft_core.data.fetch import fetch_https
from grft_core.errors import DatasetRejected

# Copies from a remote artifact store go in pieces of this size, with a cancel check between them.
_COPY_CHUNK = 1024 * 1024
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".csv", ".jsonl", ".ndjson", ".parquet")


def _suffix(filename: str) -> str:
    lowered = filename.lower()
    return next((s for s in _ARCHIVE_SUFFIXES if lowered.endswith(s)), "")


def _uploaded_copy(
    settings: Settings, session: Session, job: JobSpec, ref: str, field: str, dest: Path
) -> str:
    """A local path, named ``<file-id><suffix>`` (the suffix tells the format), for an uploaded file."""
    record = tenant_file(session, job.tenant_id, ref)
    if record is None:
        raise DatasetRejected(f"{field} {ref} does not exist", param=field)
    store = ArtifactStore(settings.artifact_url)
    target = dest / f"{record.id}{_suffix(record.filename)}"
    dest.mkdir(parents=True, exist_ok=True)
    if target.exists():  # the same file given as training and validation data
        return target.as_uri()
    key = record.uri[len(store.url) + 1 :] if record.uri.startswith(store.url + "/") else None
    local = store.local_path(key) if key else None
    if local is not None and local.exists():
        target.symlink_to(local)
    elif key is not None:
        with store.open(key) as source, target.open("wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                check_stop()
                out.write(chunk)
    else:
        raise DatasetRejected(f"{field} {ref} is not in this service's artifact store", param=field)
    return target.as_uri()


def remote_copy(
    settings: Settings,
    tenant_id: str,
    ref: str,
    field: str,
    dest: Path,
    resolve: Resolver = socket.getaddrinfo,
) -> str:
    """The URI the loader reads for a dataset URI of ``tenant_id``, after checking it again.

    Checked again right before the fetch: the row may predate a change of the allowed roots, hosts or
    s3 prefix, and the host may resolve elsewhere than when the job was created. An ``https://`` URI is
    downloaded here, into ``dest/<field>/``, from exactly the addresses the check approved (``resolve``
    is asked once, and the fetch resolves nothing), and the local copy is what the loader reads.
    """
    parsed = check_dataset_uri(ref, settings, field=field, tenant=tenant_id, resolve=resolve)
    if parsed.scheme != "https":
        return parsed.uri
    folder = dest / field
    folder.mkdir(parents=True, exist_ok=True)
    return fetch_https(parsed.uri, parsed.addresses, folder).as_uri()


def data_uris(
    settings: Settings, job: JobSpec, dest: Path, should_stop: ShouldStop | None = None
) -> tuple[str, str | None]:
    """The URIs the loader reads for the job's training and validation data (None: no validation file),
    with local copies under ``dest``."""
    uris: list[str | None] = []
    with stop_checks(should_stop), session_scope(settings.database_url) as session:
        for field, ref in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if ref is None:
                uris.append(None)
            elif ref.startswith("file-"):
                uris.append(_uploaded_copy(settings, session, job, ref, field, dest))
            else:
                uris.append(remote_copy(settings, job.tenant_id, ref, field, dest))
    train = uris[0]
    assert train is not None
    return train, uris[1]


def data_limits(settings: Settings) -> DataLimits:
    """The library's bounds on reading a dataset, from the service's settings."""
    return DataLimits(
        max_image_pixels=settings.max_image_pixels,
        max_text_chars=settings.max_text_chars,
        max_record_bytes=settings.max_record_bytes,
        max_extract_bytes=settings.max_extract_bytes,
    )


def tenant_names(job: JobSpec, *local: str | None) -> dict[str, str]:
    """The tenant's names for the job's data (the file ids or URIs they gave), keyed by every spelling
    messages may use: the name itself, and the local copy the loader read."""
    refs = (job.training_file, job.validation_file)
    names = {ref: ref for ref in refs if ref}
    names.update({path: ref for path, ref in zip(local, refs, strict=False) if path and ref})
    return names
