"""One reader of ``GRFT_MODEL_DIR`` per side: the service's settings, and the library's
``default_store_dir`` for callers that pass no folder. Service code always passes its folder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from domain.settings import Settings
from grft_core.models.registry import USER_STORE_DIR, ModelRegistry, default_store_dir

ROOT = Path(__file__).resolve().parents[2]


class TestModelDir:
    def test_settings_read_the_variable(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("GRFT_MODEL_DIR", str(tmp_path / "models"))
        assert Settings().model_dir == tmp_path / "models"

    def test_settings_default_is_the_library_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("GRFT_MODEL_DIR", raising=False)
        assert Settings().model_dir == USER_STORE_DIR == default_store_dir()

    def test_a_given_folder_wins_over_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("GRFT_MODEL_DIR", str(tmp_path / "env"))
        assert default_store_dir(tmp_path / "given") == tmp_path / "given"
        assert ModelRegistry(tmp_path / "given").store_dir == tmp_path / "given"
        assert ModelRegistry().store_dir == tmp_path / "env"

    def test_service_code_never_builds_a_registry_without_a_folder(self) -> None:
        bare = []
        for package in ("api", "domain", "worker"):
            for path in (ROOT / package).rglob("*.py"):
                for node in ast.walk(ast.parse(path.read_text())):
                    if (
                        isinstance(node, ast.Call)
                        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ModelRegistry"
                        and not node.args
                        and not node.keywords
                    ):
                        bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        assert bare == []

    def test_only_the_registry_names_the_variable_in_the_library(self) -> None:
        readers = [
            str(path.relative_to(ROOT))
            for path in (ROOT / "grft_core").rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and node.value == "GRFT_MODEL_DIR"
        ]
        assert readers == ["grft_core/models/registry.py"]
