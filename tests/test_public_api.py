"""The library's public face: every advertised name resolves, and importing the package is cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import grft_core


def test_every_public_name_resolves() -> None:
    missing = [name for name in grft_core.__all__ if getattr(grft_core, name, None) is None]
    assert not missing
    assert grft_core.GRFTConfig is __import__("grft_core.method.config", fromlist=["x"]).GRFTConfig


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        grft_core.no_such_thing  # noqa: B018


def test_import_loads_no_torch() -> None:
    code = "import sys, grft_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
