"""The arrows of DESIGN.md §2, enforced on the source: ``grft_core`` imports neither ``api`` nor
``worker``; ``worker`` may import ``api``'s domain modules but never its routes or app; ``api`` never
imports ``worker`` (it sends tasks by name)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _is(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


_API_ROUTES = re.compile(r"^api(\.[A-Za-z_]\w*)*\.routes(\.|$)")

# package → (rule text, predicate on an imported module name that is true for a forbidden import)
RULES: dict[str, tuple[str, Callable[[str], bool]]] = {
    "grft_core": ("must not import api or worker", lambda m: _is(m, "api") or _is(m, "worker")),
    "worker": (
        "must not import api routes or api.main",
        lambda m: bool(_API_ROUTES.match(m)) or _is(m, "api.main"),
    ),
    "api": ("must not import worker", lambda m: _is(m, "worker")),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, absolute module)`` for every import in ``source``; ``from a import b`` yields ``a`` and
    ``a.b`` (``b`` may be a submodule), relative imports are resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def violations(package: str, root: Path = ROOT) -> list[str]:
    rule, forbidden = RULES[package]
    found = []
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(path, root)
        for line, imported in imported_modules(
            path.read_text(encoding="utf-8"), name, path.name == "__init__.py"
        ):
            if forbidden(imported):
                found.append(f"{path.relative_to(root)}:{line} imports {imported} ({package} {rule})")
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_imports_point_one_way(package: str) -> None:
    if not (ROOT / package).is_dir():
        pytest.fail(f"{package}/ is missing")
    found = violations(package)
    assert not found, "wrong-way imports:\n" + "\n".join(found)


class TestChecker:
    """The checker itself catches each kind of wrong arrow, absolute and relative."""

    @pytest.mark.parametrize(
        ("package", "file", "source", "expected"),
        [
            ("grft_core", "grft_core/x.py", "import api.db\n", "api.db"),
            ("grft_core", "grft_core/x.py", "from worker import tasks\n", "worker"),
            ("worker", "worker/t.py", "from api.jobs.routes import router\n", "api.jobs.routes"),
            ("worker", "worker/t.py", "from api.jobs import routes\n", "api.jobs.routes"),
            ("worker", "worker/t.py", "import api.main\n", "api.main"),
            ("api", "api/jobs/service.py", "from worker.tasks import run\n", "worker.tasks"),
            ("api", "api/jobs/service.py", "def f():\n    import worker\n", "worker"),
        ],
    )
    def test_flags(self, tmp_path: Path, package: str, file: str, source: str, expected: str) -> None:
        (tmp_path / file).parent.mkdir(parents=True)
        (tmp_path / file).write_text(source)
        found = violations(package, tmp_path)
        assert found
        assert f"imports {expected} " in found[0]
        assert found[0].startswith(f"{file}:")

    @pytest.mark.parametrize(
        ("package", "file", "source"),
        [
            (
                "worker",
                "worker/t.py",
                "from api.jobs import repository, models\nfrom api.settings import Settings\n",
            ),
            ("grft_core", "grft_core/x.py", "import apiary\nfrom .layers import GRFTLayer\n"),
            ("api", "api/jobs/service.py", "from . import repository\nimport workerpool\n"),
        ],
    )
    def test_allows(self, tmp_path: Path, package: str, file: str, source: str) -> None:
        (tmp_path / file).parent.mkdir(parents=True)
        (tmp_path / file).write_text(source)
        assert violations(package, tmp_path) == []

    def test_resolves_relative_imports(self) -> None:
        found = list(imported_modules("from ..jobs import routes\n", "api.adapters.service", False))
        assert (1, "api.jobs.routes") in found
        found = list(imported_modules("from . import models\n", "api.adapters", True))
        assert (1, "api.adapters.models") in found
