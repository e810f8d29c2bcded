"""Tokenizer files of a transformers model folder: copied into the model store, loaded offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grft_core.errors import ConfigError
from grft_core.models.classifier import ensure_hub_offline
from grft_core.models.serialization import copy_file_atomic

__all__ = ["TOKENIZER_FILES", "copy_tokenizer_files", "load_tokenizer"]

#: Files that make up a tokenizer in a transformers folder (whichever of them exist are copied).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def copy_tokenizer_files(src: Path, dst: Path, *, max_length: int | None = None) -> None:
    """Copy the tokenizer files of a transformers folder, each atomically.

    Args:
        src: source folder.
        dst: destination folder (created if missing).
        max_length: if given, written as ``model_max_length`` into ``tokenizer_config.json`` (for a model
            with fewer position embeddings than the tokenizer it borrows).
    """

    def cap(raw: bytes) -> bytes:
        return json.dumps({**json.loads(raw), "model_max_length": max_length}).encode()

    for file in TOKENIZER_FILES:
        if (Path(src) / file).is_file():
            capped = max_length is not None and file == "tokenizer_config.json"
            copy_file_atomic(Path(src) / file, Path(dst) / file, cap if capped else None)


def load_tokenizer(folder: Path) -> Any:
    """Load the tokenizer stored in a local model folder (no network, no custom code).

    Args:
        folder: a folder with tokenizer files.
    Returns:
        A transformers tokenizer.
    Raises:
        ConfigError: no usable tokenizer in the folder (``param="tokenizer"``).
    """
    ensure_hub_offline()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"no usable tokenizer in {folder}: {exc}", param="tokenizer") from exc
