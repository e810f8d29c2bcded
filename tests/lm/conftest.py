"""Language-model fixtures: a tiny LLaMA registered once per session in the session's model store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.lm.helpers import tiny_llama_folder

TINY_LM = "tiny-llama-test"


@pytest.fixture(scope="session")
def tiny_lm_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face folder: random-init 2-layer LLaMA + the tiny chat tokenizer."""
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama-src"))


@pytest.fixture(scope="session")
def tiny_lm(registry: Any, tiny_lm_source: Path) -> str:
    """The tiny LLaMA's name in the session's model store (``GRFT_MODEL_DIR`` points there)."""
    from grft_core.errors import ConfigError

    try:
        registry.add_causal_lm(TINY_LM, tiny_lm_source)
    except ConfigError:  # already added by an earlier module in this session
        registry.get(TINY_LM)
    return TINY_LM
