"""A job's experiment-tracking integrations: OpenAI's Weights & Biases shape and our MLflow extension.

    [{"type": "wandb", "wandb": {"project": "p", "name": "run", "entity": "team", "tags": ["a"]}},
     {"type": "mlflow", "mlflow": {"tracking_uri": "https://mlflow.corp", "experiment_name": "e"}}]

No credentials travel in a request: the worker's environment holds them (``WANDB_API_KEY``, MLflow's
``MLFLOW_TRACKING_*``). An MLflow ``tracking_uri`` is a server the worker connects to, so it passes
the webhook network policy (``domain.webhooks.urls``), or a ``file://`` store under
``GRFT_HOME/tracking`` (a path the service owns; anywhere else would let a request write files on the
worker). The worker checks again before it connects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from domain.settings import Settings
from domain.webhooks.urls import WebhookRejected, check_webhook_url
from grft_core.errors import ConfigError

MAX_INTEGRATIONS = 4
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WandbOptions(_Strict):
    project: Name
    name: Name | None = None
    entity: Name | None = None
    tags: list[Tag] | None = Field(default=None, max_length=32)


class MlflowOptions(_Strict):
    tracking_uri: str = Field(min_length=1, max_length=2048)
    experiment_name: str = Field(min_length=1, max_length=256)
    run_name: Name | None = None


class Integration(_Strict):
    """One tracker: ``type`` names it, and the field of that name holds its options."""

    type: Literal["wandb", "mlflow"]
    wandb: WandbOptions | None = None
    mlflow: MlflowOptions | None = None

    @model_validator(mode="after")
    def _options_of_its_type(self) -> Integration:
        if getattr(self, self.type) is None:
            raise ValueError(f"type is {self.type!r}, so {self.type} must hold its options")
        other = "mlflow" if self.type == "wandb" else "wandb"
        if getattr(self, other) is not None:
            raise ValueError(f"{other} is given but type is {self.type!r}")
        return self


def tracking_root(settings: Settings) -> Path:
    """Where ``file://`` MLflow stores may live: ``GRFT_HOME/tracking``."""
    return settings.home / "tracking"


def check_tracking_uri(uri: str, settings: Settings, *, field: str) -> str:
    """Accept an MLflow tracking URI, or raise ``ConfigError`` naming ``field``."""
    scheme = urlsplit(uri).scheme
    if scheme == "file":
        parts = urlsplit(uri)
        path = Path(url2pathname(parts.path)).resolve()
        root = tracking_root(settings).resolve()
        if parts.netloc not in ("", "localhost") or not path.is_relative_to(root):
            raise ConfigError(f"{field}: file:// tracking stores must lie under {root}", param=field)
        return uri
    if scheme not in ("https", "http"):
        raise ConfigError(f"{field} must be an https://, http:// or file:// URI", param=field)
    try:
        return check_webhook_url(uri, settings, field=field).uri
    except WebhookRejected as exc:
        raise ConfigError(exc.message, param=field) from exc


def check_integrations(items: list[Integration] | None, settings: Settings) -> list[dict[str, Any]]:
    """The integrations as stored on the job row (validated, ``None`` fields left out).

    Raises:
        ConfigError: an MLflow tracking URI the policy refuses; ``param`` is its request path.
    """
    stored = []
    for i, item in enumerate(items or []):
        if item.mlflow is not None:
            check_tracking_uri(
                item.mlflow.tracking_uri, settings, field=f"integrations.{i}.mlflow.tracking_uri"
            )
        stored.append(item.model_dump(mode="json", exclude_none=True))
    return stored
