"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies, even by SIGKILL (Linux).

    Call it in the child (a ``preexec_fn``, a pool initializer). Returns whether the request was made:
    elsewhere, or without glibc, callers need their own watch.
    """
    if sys.platform != "linux":
        return False
    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
