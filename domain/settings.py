"""One settings object per process, from ``GRFT_*`` environment variables.

With nothing set, the service runs embedded: SQLite and artifacts under ``GRFT_HOME`` and a broker
that needs no server (kombu's filesystem transport). Setting ``GRFT_DATABASE_URL`` and
``GRFT_BROKER_URL`` gives the distributed mode.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-secret-change-me"
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")
_S3_PREFIX = re.compile(
    r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[A-Za-z0-9._~=:@/{}-]+)$"
)


class Settings(BaseSettings):
    """Service configuration; refuses the default secret outside ``env=dev``."""

    model_config = SettingsConfigDict(env_prefix="GRFT_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    home: Path = Field(default_factory=lambda: Path.home() / ".local" / "share" / "grft")
    database_url: str = ""
    broker_url: str = ""
    artifact_url: str = ""
    # The service's one reading of GRFT_MODEL_DIR: every registry it builds gets this folder by argument.
    # The default is the library's (grft_core.models.registry.USER_STORE_DIR), written out here so
    # that reading settings does not import torch.
    model_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "grft" / "models")
    secret_key: str = DEV_SECRET
    auth_disabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    # Jobs a tenant may keep stored, finished ones included; deleting finished jobs frees room.
    max_jobs_per_tenant: int = Field(default=1000, ge=1)
    # Jobs a tenant may have validating, queued or running at once.
    max_active_jobs_per_tenant: int = Field(default=16, ge=1)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    reconcile_seconds: float = Field(default=30.0, gt=0)
    # A job waiting this long in queued (or validating_files with no live validator) is published again:
    # its message may have been lost (a broker restarted empty). Duplicates are harmless (the claim).
    republish_seconds: float = Field(default=60.0, gt=0)
    # How often a worker collects garbage (old checkpoints, stale temp uploads); one worker at a time.
    gc_seconds: float = Field(default=3600.0, gt=0)
    checkpoint_every: int = Field(default=50, ge=0)
    # Garbage collection (domain.gc): the checkpoints of a job that finished (succeeded, failed or
    # cancelled) longer ago than this are deleted, rows and files (a succeeded job keeps its adapter);
    # staging files under the artifact store's tmp/ older than temp_ttl_hours are partial uploads
    # that a dead process left behind (an upload in progress keeps writing, so it stays younger).
    checkpoint_retention_hours: float = Field(default=24.0, ge=0)
    temp_ttl_hours: float = Field(default=6.0, gt=0)
    queue: str = "gpu"
    dataset_roots: list[Path] = Field(default_factory=list)
    # Hostnames, IP addresses or CIDR networks that dataset URIs may reach even when they are not
    # public (an operator's own object store, say). JSON list, e.g. '["data.corp", "10.8.0.0/16"]'.
    dataset_allow_hosts: list[str] = Field(default_factory=list)
    # Webhooks (domain.webhooks): hosts, IP addresses or CIDR networks that webhook URLs may reach even
    # when they are not public, in the same form as dataset_allow_hosts (which does not apply to them).
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    # Seconds one delivery attempt may take (connect, send, first bytes of the answer).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Tries per delivery, and the wait before the second one (doubled before each later one).
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_seconds: float = Field(default=30.0, ge=0)
    # Where a tenant's s3:// dataset URIs may point: a template such as "s3://datasets/{tenant}/", where
    # {tenant} (one whole path segment of the key) becomes the caller's tenant id. The worker reads
    # s3 with the service's own credentials, so nothing outside this prefix is readable through a job;
    # empty (the default): s3:// dataset URIs are refused. See domain.dataset_uris.
    dataset_s3_prefix: str = ""
    predict_max_items: int = Field(default=64, ge=1, le=4096)
    predict_max_input_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    # Prediction requests (one-adapter or batched) per tenant per minute, per replica; 0: no limit.
    predict_rate_per_minute: int = Field(default=600, ge=0)
    inference_cache_bytes: int = Field(default=1 << 30, ge=1)
    inference_max_adapters: int | None = Field(default=None, ge=1)
    inference_max_batch: int = Field(default=64, ge=1, le=4096)
    inference_max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    # Fairness between tenants sharing a base model's batches. Costs count full-size items: a text's
    # tokens after truncation over the model's token limit, an image's pixels over its input size.
    # The most cost one forward pass gathers (unset: inference_max_batch).
    inference_max_batch_cost: float | None = Field(default=None, gt=0, le=65536)
    # Per tenant, per replica: prediction cost queued or running at once, and prediction requests in
    # progress at once; past either the request is refused (429, Retry-After). 0: no limit. A lone
    # request over the cost cap is still admitted when the tenant has nothing else in flight.
    inference_tenant_max_cost: float = Field(default=256.0, ge=0)
    inference_tenant_max_requests: int = Field(default=16, ge=0, le=4096)
    metrics_enabled: bool = True
    # Intra-op threads of torch in the worker's training and the API's inference; 0 keeps torch's
    # default (one per core). Set it when a worker and an API replica share a machine's cores:
    # two processes each spinning one thread per core slow each other down many times over.
    torch_threads: int = Field(default=0, ge=0, le=1024)
    # Resource bounds on what one input may make a process hold (DESIGN §7). The defaults are the
    # library's (grft_core.data.limits.DEFAULT_*), written out so that reading settings imports no torch.
    # Pixels per image, read from the header before decoding (training data and predict inputs).
    max_image_pixels: int = Field(default=25_000_000, ge=1)
    # Characters per text item (a dataset row or a predict input).
    max_text_chars: int = Field(default=100_000, ge=1)
    # Bytes per CSV record or JSONL line, counted while it is read.
    max_record_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    # Bytes an archive may expand to (counted while extracting), and a Parquet file's columns.
    max_extract_bytes: int = Field(default=1024**3, ge=1)
    # Request bodies of the JSON routes; uploads have max_upload_bytes, predict routes their own bound.
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # Origins whose pages may call the API from a browser (CORS), e.g. '["https://ops.example.com"]'.
    # Empty (the default): no CORS headers; the dashboard at / is same-origin and needs none.
    cors_origins: list[str] = Field(default_factory=list)
    # Operations (domain.logging, api.observability, worker.metrics). "json": one JSON object per log
    # line (time, level, logger, message, request_id, tenant_id, job_id) for log shippers; "text"
    # leaves the process's usual human-readable logging alone.
    log_format: Literal["text", "json"] = "text"
    # `grft serve` migrates the database before serving. Deployments with several replicas turn it off
    # and run `grft db upgrade` once (a migrate job); the replicas and `grft worker` then wait up to
    # schema_wait_seconds for the schema to reach the code's head before they start.
    migrate_on_start: bool = True
    schema_wait_seconds: float = Field(default=300.0, ge=0)
    # Port of a worker's Prometheus endpoint (step time, throughput, memory, jobs finished); 0: none.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("dataset_allow_hosts", "webhook_allow_hosts")
    @classmethod
    def _check_allow_hosts(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not _HOST_NAME.match(entry):
                    raise ValueError(f"{entry!r} is neither a host name nor an IP network") from None
        return [entry.lower().rstrip(".") for entry in entries]

    @field_validator("dataset_s3_prefix")
    @classmethod
    def _check_s3_prefix(cls, template: str) -> str:
        if not template:
            return ""
        match = _S3_PREFIX.match(template)
        segments = match.group("key").removesuffix("/").split("/") if match else []
        others = [s for s in segments if s != "{tenant}"]
        if (
            match is None
            or ".." in match.group("bucket")
            or segments.count("{tenant}") != 1
            or any(s in ("", ".", "..") or "{" in s or "}" in s for s in others)
        ):
            raise ValueError(
                f"{template!r} must look like s3://bucket/path/{{tenant}}/: {{tenant}} once, as a whole "
                "path segment of the key, and no '%', '.', '..' or empty segments"
            )
        return f"s3://{match.group('bucket')}/{'/'.join(segments)}/"

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        # Relative homes (GRFT_HOME=demo-out/home) must still give absolute file:// URIs.
        self.home = self.home.expanduser().resolve()
        self.model_dir = self.model_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'grft.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.artifact_url:
            self.artifact_url = (self.home / "artifacts").as_uri()
        if self.env != "dev" and self.secret_key == DEV_SECRET:
            raise ValueError("GRFT_SECRET_KEY must be set outside GRFT_ENV=dev")
        return self

    @property
    def embedded(self) -> bool:
        """True when the broker is the serverless filesystem transport."""
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages (embedded mode)."""
        return self.home / "broker"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
