"""The ``integrations`` field of a job request: OpenAI's W&B shape, our MLflow one, and the policy on
MLflow tracking URIs (no file store outside GRFT_HOME/tracking, no private servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.jobs.schemas import JobCreate
from domain.jobs.integrations import check_integrations
from domain.settings import Settings
from grft_core.errors import ConfigError

WANDB = {"type": "wandb", "wandb": {"project": "p", "name": "n", "entity": "team", "tags": ["a", "b"]}}


def request(*integrations: Any) -> JobCreate:
    return JobCreate.model_validate(
        {"model": "tiny-bert", "training_file": "file-x", "integrations": list(integrations)}
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url="sqlite://", broker_url="", artifact_url="")


class TestShape:
    def test_openai_wandb_shape(self, settings: Settings) -> None:
        body = request(WANDB)
        assert check_integrations(body.integrations, settings) == [WANDB]

    def test_mlflow_extension(self, settings: Settings) -> None:
        uri = (settings.home / "tracking" / "mlruns").as_uri()
        item = {"type": "mlflow", "mlflow": {"tracking_uri": uri, "experiment_name": "e"}}
        assert check_integrations(request(item).integrations, settings) == [item]

    @pytest.mark.parametrize(
        ("item", "words"),
        [
            ({"type": "wandb"}, "wandb must hold its options"),
            ({"type": "wandb", "wandb": {"project": "p"}, "mlflow": {}}, "mlflow"),
            ({"type": "comet", "comet": {}}, "type"),
            ({"type": "wandb", "wandb": {"project": "p", "api_key": "secret"}}, "api_key"),
            ({"type": "wandb", "wandb": {"name": "no project"}}, "project"),
            ({"type": "wandb", "wandb": {"project": "p", "tags": ["x" * 65]}}, "tags"),
        ],
    )
    def test_refused(self, item: dict[str, Any], words: str) -> None:
        with pytest.raises(ValidationError) as caught:
            request(item)
        assert words in str(caught.value)

    def test_at_most_four(self) -> None:
        with pytest.raises(ValidationError):
            request(*[WANDB] * 5)


class TestTrackingUri:
    @pytest.mark.parametrize(
        ("uri", "words"),
        [
            ("file:///etc/mlruns", "must lie under"),
            ("file:///tmp/../etc", "must lie under"),
            ("http://127.0.0.1:5000", "non-public address"),
            ("http://10.0.0.1:5000", "non-public address"),
            ("databricks", "https://, http:// or file://"),
            ("sqlite:///mlflow.db", "https://, http:// or file://"),
        ],
    )
    def test_refused(self, settings: Settings, uri: str, words: str) -> None:
        item = {"type": "mlflow", "mlflow": {"tracking_uri": uri, "experiment_name": "e"}}
        with pytest.raises(ConfigError) as caught:
            check_integrations(request(WANDB, item).integrations, settings)
        assert caught.value.param == "integrations.1.mlflow.tracking_uri"
        assert words in caught.value.message

    def test_allow_list_opens_a_private_server(self, settings: Settings) -> None:
        allowed = settings.model_copy(update={"webhook_allow_hosts": ["10.0.0.0/8"]})
        item = {"type": "mlflow", "mlflow": {"tracking_uri": "http://10.0.0.1:5000", "experiment_name": "e"}}
        assert check_integrations(request(item).integrations, allowed) == [item]
