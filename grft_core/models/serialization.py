"""Reading and writing tensors and small JSON files safely.

Weights and adapters are stored as safetensors plus JSON; nothing a user hands us is ever unpickled.
``safe_torch_load`` is the one place in the library that calls ``torch.load``, and it always passes
``weights_only=True`` so that a pickle naming an arbitrary class is refused instead of executed.
Writes go to a temporary file in the destination folder and are moved into place with ``os.replace``,
so a reader (or a second process doing the same write) never sees a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from grft_core.errors import ConfigError

__all__ = [
    "copy_file_atomic",
    "fingerprint_state_dict",
    "load_safetensors",
    "safe_torch_load",
    "save_json_atomic",
    "save_safetensors_atomic",
]


def safe_torch_load(path: Path) -> Any:
    """Load a ``torch.save`` file onto the CPU without executing arbitrary pickled code.

    Args:
        path: the file to read.
    Returns:
        Whatever the file holds, restricted to tensors, primitive types and containers of them.
    Raises:
        ConfigError: the file is missing, is not a torch file, or names a class outside the
            ``weights_only`` allowlist (``param`` is the file name).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}", param=path.name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ConfigError(
            f"{path.name}: refused to load (only plain tensors and containers are allowed): {exc}",
            param=path.name,
        ) from exc


def fingerprint_state_dict(state: Mapping[str, Tensor]) -> str:
    """Hash a state dict's names, dtypes, shapes and raw bytes into ``"sha256:<hex>"``.

    Names are visited in sorted order and every field is length-prefixed, so the result does not depend
    on dict order, on how the tensors were stored on disk, or on their strides or device.

    Args:
        state: tensor name to tensor.
    Returns:
        ``"sha256:"`` followed by 64 hex digits.
    """
    hasher = hashlib.sha256()

    def field(data: bytes) -> None:
        # Length prefixes make the encoding unambiguous ("ab"+"c" and "a"+"bc" hash differently).
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)

    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        field(name.encode("utf-8"))
        field(str(tensor.dtype).encode("ascii"))
        field(json.dumps(list(tensor.shape)).encode("ascii"))
        # A uint8 view reads the raw bytes of any dtype (bf16 included) without a copy.
        raw = tensor.reshape(-1).view(torch.uint8).numpy().data
        hasher.update(raw.nbytes.to_bytes(8, "little"))
        hasher.update(raw)
    return "sha256:" + hasher.hexdigest()


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name created with "x" (not mkstemp, whose 0600 mode would survive the rename): the final
    # file gets the usual umask-derived permissions, like any other file the process writes.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.open("xb").close()
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _own_storage(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors that each own their storage (safetensors refuses shared memory)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def save_safetensors_atomic(
    tensors: Mapping[str, Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors to a safetensors file atomically (temporary file in the same folder, then rename).

    Args:
        tensors: name to tensor; any device, layout or shared storage (copied as needed).
        path: destination file; its folder is created if missing.
        metadata: optional string-to-string header metadata.
    """
    prepared = _own_storage(tensors)
    with _atomic_target(path) as tmp:
        save_file(prepared, str(tmp), metadata=metadata)


def load_safetensors(path: Path, *, param: str | None = None) -> dict[str, Tensor]:
    """Read every tensor of a safetensors file onto the CPU.

    Args:
        path: the file to read.
        param: the field name reported in errors (defaults to the file name).
    Returns:
        Tensor name to tensor.
    Raises:
        ConfigError: the file is missing or is not a valid safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}", param=param or path.name)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        message = f"{path.name} is not a valid safetensors file: {exc}"
        raise ConfigError(message, param=param or path.name) from exc


def save_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically.

    Args:
        obj: anything ``json.dumps`` accepts.
        path: destination file; its folder is created if missing.
    """
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    with _atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def copy_file_atomic(src: Path, dst: Path, transform: Callable[[bytes], bytes] | None = None) -> None:
    """Copy ``src`` to ``dst`` atomically, optionally rewriting the bytes on the way.

    Args:
        src: file to copy.
        dst: destination file; its folder is created if missing.
        transform: optional function applied to the whole content (used for small text files).
    """
    with _atomic_target(dst) as tmp:
        if transform is None:
            shutil.copyfile(src, tmp)
        else:
            tmp.write_bytes(transform(Path(src).read_bytes()))
