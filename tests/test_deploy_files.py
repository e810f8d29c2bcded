"""``docker-compose.yml`` and ``Dockerfile`` agree with the code: every command is a real ``grft``
subcommand, every ``GRFT_*`` variable a real setting, the worker gets a GPU, the processes wait for
their dependencies, and the image is a multi-stage build from the lock file."""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from domain.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
GRFT_PROCESSES = ("api", "worker", "migrate")
# The service commands DESIGN.md documents; used only while the service CLI module does not exist.
DOCUMENTED = {"serve": None, "worker": None, "db": {"upgrade"}, "keys": None}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def grft_cli() -> Any:
    """The click group behind ``grft``: the app of the module the ``grft`` script runs
    (``[project.scripts]``), else ``api.cli``'s, else the library's (see ``DOCUMENTED``)."""
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["grft"]
    for name in (script.partition(":")[0], "api.cli", "grft_core.cli"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        if isinstance(getattr(module, "app", None), typer.Typer):
            return typer.main.get_command(module.app)
    raise AssertionError("no typer app behind the grft script")


def grft_commands() -> dict[str, Any]:
    """Top-level ``grft`` command name → its click command (None where only documented so far)."""
    commands: dict[str, Any] = dict(getattr(grft_cli(), "commands", {}))
    if "serve" not in commands:
        commands = {**dict.fromkeys(DOCUMENTED), **commands}
    return commands


def check_argv(argv: list[str], commands: dict[str, Any]) -> None:
    """Walk ``argv`` down the command tree; every ``--option`` must be one the command declares."""
    assert argv, "empty command"
    assert argv[0] in commands, f"'grft {argv[0]}' is not a command ({sorted(commands)})"
    command, rest = commands[argv[0]], argv[1:]
    if command is None:  # documented, not yet implemented: only the documented subcommands are known
        sub = DOCUMENTED[argv[0]]
        assert sub is None or (rest and rest[0] in sub), f"'grft {' '.join(argv)}' is not documented"
        return
    while hasattr(command, "commands"):  # a group: the next word names the subcommand
        assert rest, f"'grft {' '.join(argv)}' needs a subcommand of {sorted(command.commands)}"
        assert rest[0] in command.commands, f"'{rest[0]}' is not a subcommand in 'grft {' '.join(argv)}'"
        command, rest = command.commands[rest[0]], rest[1:]
    declared = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in declared, f"'grft {' '.join(argv)}': {word} is not an option"


def grft_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the grft image (built from this Dockerfile)."""
    services: dict[str, dict[str, Any]] = compose["services"]
    return {
        name: s for name, s in services.items() if "build" in s or str(s.get("image", "")).startswith("grft")
    }


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _depends(service: dict[str, Any]) -> set[str]:
    deps = service.get("depends_on") or {}
    return set(deps) if isinstance(deps, dict | list) else set()


class TestCompose:
    def test_grft_processes_exist(self, compose) -> None:
        assert set(GRFT_PROCESSES) <= set(grft_services(compose))
        assert {"postgres", "redis", "minio"} <= set(compose["services"])

    def test_every_command_is_a_grft_subcommand(self, compose) -> None:
        commands = grft_commands()
        for name, service in grft_services(compose).items():
            assert "command" in service, f"{name} has no command"
            try:
                check_argv(_argv(service["command"]), commands)
            except AssertionError as exc:
                raise AssertionError(f"service {name}: {exc}") from None

    @pytest.mark.parametrize(
        "argv", [["train2"], ["db"], ["db", "downgrade"], ["serve", "--hots", "0.0.0.0"], ["worker", "--gpu"]]
    )
    def test_the_check_refuses_wrong_commands(self, argv) -> None:
        with pytest.raises(AssertionError):
            check_argv(argv, grft_commands())

    def test_commands_run_the_documented_processes(self, compose) -> None:
        services = compose["services"]
        assert _argv(services["api"]["command"])[:3] == ["serve", "--host", "0.0.0.0"]
        assert _argv(services["worker"]["command"])[0] == "worker"
        assert _argv(services["migrate"]["command"]) == ["db", "upgrade"]

    def test_grft_variables_are_settings(self, compose) -> None:
        fields = set(Settings.model_fields)
        for name, service in grft_services(compose).items():
            for var in _environment(service):
                if var.startswith("GRFT_"):
                    assert var.removeprefix("GRFT_").lower() in fields, f"{name}: {var} is not a setting"

    def test_distributed_mode_configuration(self, compose) -> None:
        for name in GRFT_PROCESSES:
            env = _environment(compose["services"][name])
            assert env["GRFT_DATABASE_URL"].startswith("postgresql+psycopg://"), name
            assert env["GRFT_BROKER_URL"].startswith("redis://"), name
            assert env["GRFT_ARTIFACT_URL"].startswith("s3://"), name
            assert env["FSSPEC_S3_ENDPOINT_URL"].startswith("http://minio:"), name
            assert {"GRFT_MODEL_DIR", "GRFT_SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(
                env
            )
            assert env["GRFT_ENV"] == "prod", name

    def test_secrets_are_required_not_defaulted(self, compose) -> None:
        # ${VAR:?message} makes compose refuse to start without it; no secret is written in the file.
        env = _environment(compose["services"]["api"])
        for var in ("GRFT_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", env[var]), var
        assert ":?" in env["GRFT_DATABASE_URL"]

    def test_worker_reserves_a_gpu(self, compose) -> None:
        devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)

    @pytest.mark.parametrize("name", ["api", "worker"])
    def test_processes_wait_for_their_dependencies(self, compose, name) -> None:
        service = compose["services"][name]
        assert {"migrate", "postgres", "redis"} <= _depends(service)
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        for infra in ("postgres", "redis"):
            assert service["depends_on"][infra]["condition"] == "service_healthy"
            assert "healthcheck" in compose["services"][infra]

    def test_migrate_is_one_shot(self, compose) -> None:
        migrate = compose["services"]["migrate"]
        assert migrate.get("restart", "no") == "no"
        assert "postgres" in _depends(migrate)

    def test_named_volumes_are_declared(self, compose) -> None:
        for name, service in compose["services"].items():
            for volume in service.get("volumes", []):
                source = str(volume).split(":")[0]
                if not source.startswith((".", "/")):
                    assert source in compose.get("volumes", {}), f"{name}: volume {source} is not declared"


class TestDockerfile:
    def test_multi_stage(self, dockerfile) -> None:
        stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", dockerfile, flags=re.MULTILINE | re.IGNORECASE)
        assert len(stages) >= 2
        assert re.search(r"^COPY\s+--from=builder\s", dockerfile, flags=re.MULTILINE)

    def test_installs_from_the_lock(self, dockerfile) -> None:
        assert re.search(r"^COPY\s+.*\buv\.lock\b", dockerfile, flags=re.MULTILINE)
        assert re.search(r"uv sync --frozen --no-dev", dockerfile)
        assert "/app/.venv" in dockerfile

    def test_runtime_is_slim_python_311_non_root(self, dockerfile) -> None:
        assert re.search(r"python:3\.11-slim", dockerfile)
        runtime = dockerfile[dockerfile.rfind("\nFROM ") :]
        users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.MULTILINE)
        assert users, "the runtime stage sets no USER"
        assert users[-1] not in ("root", "0")

    def test_entrypoint_is_grft(self, dockerfile) -> None:
        assert re.search(r'^ENTRYPOINT\s+\["grft"\]', dockerfile, flags=re.MULTILINE)

    def test_copies_every_source_package(self, dockerfile) -> None:
        for package in ("grft_core", "domain", "api", "worker", "migrations", "alembic.ini"):
            assert re.search(rf"^COPY\s+{package}\b", dockerfile, flags=re.MULTILINE), package

    def test_grft_variables_are_settings(self, dockerfile) -> None:
        fields = set(Settings.model_fields)
        for var in re.findall(r"\b(GRFT_[A-Z_]+)=", dockerfile):
            assert var.removeprefix("GRFT_").lower() in fields, var

    def test_context_leaves_out_local_state(self) -> None:
        ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
        assert {".git", ".venv", "tests"} <= ignored
        assert "README.md" not in ignored  # the project metadata names it: the build needs it
