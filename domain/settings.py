"""One settings object per process, from ``GRFT_*`` environment variables.

With nothing set, the service runs embedded: SQLite and artifacts under ``GRFT_HOME`` and a broker
that needs no server (kombu's filesystem transport). Setting ``GRFT_DATABASE_URL`` and
``GRFT_BROKER_URL`` gives the distributed mode.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-secret-change-me"


class Settings(BaseSettings):
    """Service configuration; refuses the default secret outside ``env=dev``."""

    model_config = SettingsConfigDict(env_prefix="GRFT_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    home: Path = Field(default_factory=lambda: Path.home() / ".local" / "share" / "grft")
    database_url: str = ""
    broker_url: str = ""
    artifact_url: str = ""
    model_dir: Path | None = None
    secret_key: str = DEV_SECRET
    auth_disabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_jobs_per_tenant: int = Field(default=1000, ge=1)
    max_active_jobs_per_tenant: int = Field(default=16, ge=1)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    reconcile_seconds: float = Field(default=30.0, gt=0)
    checkpoint_every: int = Field(default=50, ge=0)
    queue: str = "gpu"
    dataset_roots: list[Path] = Field(default_factory=list)
    predict_max_items: int = Field(default=64, ge=1, le=4096)
    predict_max_input_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    # Prediction requests (one-adapter or batched) per tenant per minute, per replica; 0: no limit.
    predict_rate_per_minute: int = Field(default=600, ge=0)
    inference_cache_bytes: int = Field(default=1 << 30, ge=1)
    inference_max_adapters: int | None = Field(default=None, ge=1)
    inference_max_batch: int = Field(default=64, ge=1, le=4096)
    inference_max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    metrics_enabled: bool = True
    # Intra-op threads of torch in the worker's training and the API's inference; 0 keeps torch's
    # default (one per core). Set it when a worker and an API replica share a machine's cores:
    # two processes each spinning one thread per core slow each other down many times over.
    torch_threads: int = Field(default=0, ge=0, le=1024)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        # Relative homes (GRFT_HOME=demo-out/home) must still give absolute file:// URIs.
        self.home = self.home.expanduser().resolve()
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
