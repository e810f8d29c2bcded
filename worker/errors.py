"""What a tenant may read about a failure: one function, ``public_error``, turns any exception into the
``{code, message, param}`` a job's error and events carry.

- A ``GrftError`` (the library's and the service's errors on purpose) is the tenant's to fix:
  ``user_error`` with its own message and param, in which the worker's local paths (its work and
  temporary folders, ``GRFT_HOME``, the artifact root, the model store) become the names the tenant
  knows: the file id or URI they gave, else the file's base name.
- Anything else is ours: ``error`` with ``internal error (reference <id>)``. The detail (exception,
  SQL, parameters, stack) goes to the worker's log under that reference, never to the tenant.
"""

from __future__ import annotations

import logging
import re
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from grft_core.errors import GrftError, TrainingInterrupted

log = logging.getLogger(__name__)

# A path-like token: what follows a hidden root up to white space, a quote or a closing bracket.
_TAIL = r"[^\s'\"`()\[\]{}<>,;]*"
_MAX_MESSAGE = 1000


@dataclass(frozen=True)
class PublicError:
    """What a job's ``error`` column and its error event say."""

    code: str
    message: str
    param: str | None = None


def reference() -> str:
    """A short id that joins a tenant's report to the worker's log."""
    return uuid.uuid4().hex[:12]


def public_error(
    exc: BaseException,
    *,
    names: Mapping[str, str] | None = None,
    roots: Iterable[str | Path] = (),
    secrets: Iterable[str] = (),
    context: str = "",
) -> PublicError:
    """The tenant-facing form of ``exc``; an internal error is logged here with its reference.

    Args:
        exc: what was raised.
        names: local path or URI → the tenant's name for it (the file id or URI they gave).
        roots: folders (or URLs) whose paths must not be shown: any path under one becomes its base name.
            The system's temporary folder is always one.
        secrets: strings never to be shown (a lease token); removed wherever they appear.
        context: what was being done, for the log line (``"attempt 2 of ftjob-…"``).
    Returns:
        ``user_error`` with the scrubbed message and param for a ``GrftError`` (except
        ``TrainingInterrupted``, which outside a cancel is a crash like any other), else ``error``
        with a generic message and a reference.
    """
    if isinstance(exc, GrftError) and not isinstance(exc, TrainingInterrupted):
        scrub = _Scrubber(names or {}, roots, secrets)
        param = scrub(exc.param) if exc.param is not None else None
        return PublicError("user_error", scrub(exc.message)[:_MAX_MESSAGE], param)
    ref = reference()
    log.error(
        "internal error (reference %s)%s: %s: %s",
        ref,
        f" during {context}" if context else "",
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    return PublicError("error", f"internal error (reference {ref})")


class _Scrubber:
    def __init__(self, names: Mapping[str, str], roots: Iterable[str | Path], secrets: Iterable[str]) -> None:
        # Known local names first, longest first, both as paths and as file:// URIs.
        known: dict[str, str] = {}
        for local, shown in names.items():
            for form in _forms(local):
                known.setdefault(form, shown)
        self.known = sorted(known.items(), key=lambda kv: len(kv[0]), reverse=True)
        self.shown = sorted(set(names.values()), key=len, reverse=True)
        hidden = {form for root in [*roots, tempfile.gettempdir()] for form in _forms(str(root))}
        alternatives = "|".join(re.escape(h) for h in sorted(hidden, key=len, reverse=True) if len(h) > 1)
        self.pattern = re.compile(f"(?:{alternatives}){_TAIL}") if alternatives else None
        self.secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        # The tenant's own names survive untouched (a URI they gave may lie under a hidden root).
        kept: list[str] = []

        def keep(value: str) -> str:
            kept.append(value)
            return f"\x00{len(kept) - 1}\x00"

        for local, shown in self.known:
            text = text.replace(local, keep(shown))
        for shown in self.shown:
            text = text.replace(shown, keep(shown)) if shown else text
        if self.pattern is not None:
            text = self.pattern.sub(_shown_path, text)
        for secret in self.secrets:
            text = text.replace(secret, "…").replace(secret[:12], "…")
        return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], text)


def _forms(path: str) -> set[str]:
    """A local path as messages may spell it: as given, resolved, and as a ``file://`` URI."""
    forms = {path.rstrip("/")}
    if path.startswith("file://"):
        forms.add(path.removeprefix("file://").rstrip("/"))
    elif path.startswith("/"):
        forms.add(Path(path).as_uri())
        try:
            resolved = str(Path(path).resolve())
        except OSError:
            resolved = path
        forms.update({resolved, Path(resolved).as_uri()})
    return {f for f in forms if f}


def _shown_path(match: re.Match[str]) -> str:
    """A hidden path's base name, keeping the punctuation of the sentence it ends (``…/a.csv:``)."""
    path = match.group(0)
    core = path.rstrip(".:")
    return (PurePosixPath(core.rstrip("/")).name or "(internal path)") + path[len(core) :]
