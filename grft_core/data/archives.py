"""Safe extraction of dataset archives (``.zip``, ``.tar.gz``, ``.tgz``, ``.tar``) into a folder.

A member whose name would leave the folder (an absolute name, ``..``, a link out of it, a device file)
is refused, and so is an archive that expands past a byte budget: counted from the sizes a zip declares
before anything is written and again while writing (a lying header), and from each tar member as the
stream reaches it. Every member counts at least a filesystem block toward the budget.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from grft_core.cancel import check_stop
from grft_core.data.formats import is_visible
from grft_core.data.images import IMAGE_SUFFIXES
from grft_core.errors import DatasetRejected

__all__ = ["ARCHIVE_SUFFIXES", "archive_root", "extract_archive"]

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# Every archive member counts at least a filesystem block toward the extraction budget, so an archive
# of millions of empty files is refused like one of a few huge ones.
_MEMBER_BYTES = 4096
_CHUNK = 1024 * 1024


def extract_archive(archive: Path, target: Path, display: str, budget: int) -> None:
    """Extract ``archive`` (a ``.zip``, else a tar) into the folder ``target``, within ``budget`` bytes.

    ``display`` is how messages call the archive. Raises :class:`DatasetRejected` for a member that
    escapes ``target``, an archive that is not readable, or one that expands past ``budget``;
    :class:`TrainingInterrupted` when the current stop check (:mod:`grft_core.cancel`) asks to stop.
    """
    if archive.name.lower().endswith(".zip"):
        _extract_zip(archive, target, display, budget)
    else:
        _extract_tar(archive, target, display, budget)


def archive_root(extracted: Path) -> Path:
    """The folder holding the data inside the extraction folder ``extracted``."""
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
