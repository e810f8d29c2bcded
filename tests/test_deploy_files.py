"""``docker-compose.yml``, ``Dockerfile`` and ``deploy/`` agree with the code: every command is a real
``grft`` subcommand, every ``GRFT_*`` variable a real setting, each worker gets its own GPU, the
processes wait for their dependencies and only the migrate job migrates, every long-running service
has a healthcheck, images are pinned, the application has MinIO credentials of its own, Prometheus
scrapes the API and every worker, and the Grafana dashboard only charts series the code exports."""

from __future__ import annotations

import importlib
import json
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
DEPLOY = ROOT / "deploy"
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
        assert re.search(r"python:3\.11(\.\d+)?-slim", dockerfile)
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


# --- operations: schema, healthchecks, images, credentials, GPUs, metrics -----------------------------

# An exact version: digits with dots (v2.54.1, 16.4, 11.2.0), or MinIO's dated release names.
EXACT_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)?([.-][A-Za-z0-9.-]+)?$|^RELEASE\.\d{4}-\d{2}-\d{2}T[\d-]+Z$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# Digests known from public deployments that pull these tags; the others carry an exact tag only.
DIGEST_PINNED = ("postgres", "prometheus", "grafana")


def _argv_of(service: dict[str, Any]) -> list[str]:
    return _argv(service.get("command", []))


def _is_worker(service: dict[str, Any]) -> bool:
    argv = _argv_of(service)
    return bool(argv) and argv[0] == "worker" and "--control" not in argv


def _gpu_ids(service: dict[str, Any]) -> list[str]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [str(i) for d in devices if "gpu" in d.get("capabilities", []) for i in d.get("device_ids", [])]


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana" / "grft.json").read_text())
    return loaded


class TestSchemaOwnership:
    def test_only_the_migrate_job_migrates(self, compose) -> None:
        migrating = [n for n, s in grft_services(compose).items() if _argv_of(s)[:2] == ["db", "upgrade"]]
        assert migrating == ["migrate"]
        for name, service in grft_services(compose).items():
            if name == "migrate":
                continue
            env = _environment(service)
            assert Settings(migrate_on_start=env["GRFT_MIGRATE_ON_START"]).migrate_on_start is False, name

    def test_processes_wait_for_the_schema(self, compose) -> None:
        for name, service in grft_services(compose).items():
            if name == "migrate":
                continue
            env = _environment(service)
            assert float(env["GRFT_SCHEMA_WAIT_SECONDS"]) > 0, name
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


class TestHealth:
    def test_every_long_running_service_has_a_healthcheck(self, compose) -> None:
        long_running = {n: s for n, s in compose["services"].items() if s.get("restart", "no") != "no"}
        expected = {"api", "worker", "reconciler", "postgres", "redis", "minio", "prometheus", "grafana"}
        assert expected <= set(long_running)
        for name, service in long_running.items():
            check = service.get("healthcheck", {})
            assert check.get("test"), f"{name} has no healthcheck"
            assert not check.get("disable"), f"{name}'s healthcheck is disabled"

    def test_api_health_is_readiness(self, compose) -> None:
        assert "/readyz" in " ".join(compose["services"]["api"]["healthcheck"]["test"])

    def test_worker_health_is_its_metrics_endpoint(self, compose) -> None:
        for name, service in compose["services"].items():
            if _argv_of(service)[:1] == ["worker"]:
                port = _environment(service)["GRFT_WORKER_METRICS_PORT"]
                assert f"127.0.0.1:{port}/metrics" in " ".join(service["healthcheck"]["test"]), name


class TestImages:
    def test_third_party_images_are_pinned(self, compose) -> None:
        for name, service in compose["services"].items():
            if name in grft_services(compose):
                continue
            image = str(service["image"])
            reference = DIGEST.sub("", image)
            repository, _, tag = reference.rpartition(":")
            assert repository, f"{name}: {image} has no tag"
            assert EXACT_TAG.match(tag), f"{name}: {image} is not an exact version"
            if any(name == pinned for pinned in DIGEST_PINNED):
                assert DIGEST.search(image), f"{name}: {image} has no digest"

    def test_dockerfile_bases_are_exact(self, dockerfile) -> None:
        assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", dockerfile, flags=re.MULTILINE)
        assert re.search(r"astral-sh/uv:\d+\.\d+\.\d+ ", dockerfile)
        assert re.search(r"^EXPOSE .*\b9101\b", dockerfile, flags=re.MULTILINE)


class TestObjectStoreCredentials:
    def test_the_app_never_uses_the_root_credentials(self, compose) -> None:
        root_user = compose["services"]["minio"]["environment"]["MINIO_ROOT_USER"]
        for name, service in grft_services(compose).items():
            env = _environment(service)
            assert env["AWS_ACCESS_KEY_ID"] not in (root_user, "minio-root"), name
            assert "MINIO_APP_PASSWORD" in env["AWS_SECRET_ACCESS_KEY"], name
            assert "MINIO_ROOT" not in " ".join(env.values()), name
        holders = {
            n
            for n, s in compose["services"].items()
            if "MINIO_ROOT_PASSWORD" in json.dumps(s.get("environment"))
        }
        assert holders == {"minio", "minio-init"}

    def test_init_creates_the_app_user_with_its_policy(self, compose) -> None:
        init = compose["services"]["minio-init"]
        script = " ".join(_argv(init["command"]) if isinstance(init["command"], str) else init["command"])
        app_user = _environment(compose["services"]["api"])["AWS_ACCESS_KEY_ID"]
        assert f"mc admin user add store {app_user}" in script
        assert "mc admin policy create store" in script
        assert f"--user {app_user}" in script
        mounted = [v for v in init["volumes"] if str(v).startswith("./deploy/minio/")]
        assert mounted
        assert (ROOT / mounted[0].split(":")[0]).is_file()

    def test_the_policy_grants_only_grft_buckets(self, compose) -> None:
        policy = json.loads((DEPLOY / "minio" / "app-policy.json").read_text())
        artifacts = _environment(compose["services"]["api"])["GRFT_ARTIFACT_URL"].removeprefix("s3://")
        prefix = Settings(
            dataset_s3_prefix=_environment(compose["services"]["api"])["GRFT_DATASET_S3_PREFIX"]
        )
        datasets = prefix.dataset_s3_prefix.removeprefix("s3://").split("/")[0]
        assert datasets != artifacts  # tenants' dataset URIs can never reach the artifact store
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow"
            for resource in statement["Resource"]:
                bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
                assert bucket in (artifacts, datasets), resource
                if bucket == datasets:  # read-only
                    assert not [a for a in statement["Action"] if a.startswith(("s3:Put", "s3:Delete"))]
            assert not {"*", "s3:*"} & set(statement["Action"])


class TestGpus:
    def test_one_worker_per_gpu(self, compose) -> None:
        workers = {n: s for n, s in compose["services"].items() if _is_worker(s)}
        assert len(workers) >= 2  # worker and at least one per-GPU example
        ids = {name: _gpu_ids(service) for name, service in workers.items()}
        assert all(len(found) == 1 for found in ids.values()), ids
        flat = [found[0] for found in ids.values()]
        assert len(set(flat)) == len(flat), f"two workers share a GPU: {ids}"

    def test_the_api_can_take_a_gpu(self, compose) -> None:
        serving = {n: s for n, s in compose["services"].items() if _argv_of(s)[:1] == ["serve"]}
        assert any(_gpu_ids(s) for s in serving.values())
        assert not _gpu_ids(compose["services"]["api"])  # the default API needs no GPU host
        assert compose["services"]["api-gpu"]["profiles"]

    def test_the_control_worker_needs_no_gpu(self, compose) -> None:
        assert not _gpu_ids(compose["services"]["reconciler"])


class TestMonitoring:
    def test_logs_are_json(self, compose) -> None:
        for name, service in grft_services(compose).items():
            assert _environment(service)["GRFT_LOG_FORMAT"] == "json", name

    def test_prometheus_scrapes_every_api_and_worker(self, compose, prometheus) -> None:
        jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
        api_names = set(jobs["grft-api"]["dns_sd_configs"][0]["names"])
        worker_sd = jobs["grft-worker"]["dns_sd_configs"][0]
        for name, service in compose["services"].items():
            argv = _argv_of(service)
            if argv[:1] == ["serve"]:
                assert name in api_names, f"{name} is not scraped"
                assert jobs["grft-api"]["dns_sd_configs"][0]["port"] == 8000
            if argv[:1] == ["worker"]:
                assert name in worker_sd["names"], f"{name} is not scraped"
                assert worker_sd["port"] == int(_environment(service)["GRFT_WORKER_METRICS_PORT"])

    def test_prometheus_and_grafana_are_wired(self, compose) -> None:
        services = compose["services"]
        prom_volumes = [str(v) for v in services["prometheus"]["volumes"]]
        assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom_volumes
        graf_volumes = [str(v).split(":")[0] for v in services["grafana"]["volumes"]]
        assert {"./deploy/grafana/provisioning", "./deploy/grafana/grft.json"} <= set(graf_volumes)
        for source in graf_volumes:
            if source.startswith("."):
                assert (ROOT / source).exists(), source
        assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"

    def test_dashboard_uses_the_provisioned_data_source(self, dashboard) -> None:
        provisioning = DEPLOY / "grafana" / "provisioning"
        sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
        uid = sources["datasources"][0]["uid"]
        assert sources["datasources"][0]["url"] == "http://prometheus:9090"
        providers = yaml.safe_load((provisioning / "dashboards" / "grft.yml").read_text())
        assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == uid, panel["title"]

    def test_dashboard_covers_http_jobs_queues_and_workers(self, dashboard) -> None:
        exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
        for needed in (
            "grft_http_requests_total",
            "grft_http_request_seconds_bucket",
            "grft_jobs",
            "grft_queue_depth",
            "grft_worker_samples_per_second",
            "grft_worker_step_seconds_bucket",
            "process_resident_memory_bytes",
            "grft_worker_cuda_memory_allocated_bytes",
        ):
            assert needed in exprs, needed

    def test_dashboard_charts_only_exported_series(self, dashboard) -> None:
        from prometheus_client import generate_latest

        from api.metrics import Metrics
        from worker.metrics import WorkerMetrics

        exported = (
            generate_latest(Metrics().registry).decode() + generate_latest(WorkerMetrics().registry).decode()
        )
        families = set(re.findall(r"^# TYPE (\w+) (\w+)", exported, flags=re.MULTILINE))
        names = set()
        for family, kind in families:
            names.add(family)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [])
            names.update(f"{family}{suffix}" for suffix in suffixes)
        # Read at scrape time from sources the test has not got (database, broker, CUDA devices).
        names |= {
            "grft_jobs",
            "grft_queue_depth",
            "grft_scrape_source_up",
            "grft_worker_cuda_memory_allocated_bytes",
            "grft_worker_cuda_memory_reserved_bytes",
        }
        exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
        used = set(re.findall(r"\b(grft_\w+|process_\w+)", exprs))
        assert used <= names, sorted(used - names)
