"""A typed client of a grft server: upload datasets, run and follow fine-tuning jobs, download and
export adapters, predict with them, and chat with causal language models (``client.chat.completions``).

    from grft_client import Client

    with Client("http://127.0.0.1:8000", api_key="grft-...") as client:
        file = client.files.upload("digits.zip")
        job = client.jobs.create("mobilenetv2_100", file.id, hyperparameters={"k": 4, "n_epochs": 3})
        for event in client.jobs.follow(job.id):
            print(event.message)
        job = client.jobs.get(job.id)
        client.adapters.download(job.adapter_id, "adapter.tar")

``AsyncClient`` has the same methods, awaited. Unset ``api_url``/``api_key`` come from
``GRFT_API_URL``/``GRFT_API_KEY``, then the config file's profile (``config_path()``). Errors are the
classes of ``grft_client._errors`` (re-exported here), each carrying ``status``, ``code``, ``param`` and
``message`` from the API's error body. This package imports nothing else of grft: it is what a remote
user installs.
"""

from grft_client._async_client import AsyncClient
from grft_client._client import Client
from grft_client._config import ClientConfig, config_path, read_profiles, resolve, save_profile
from grft_client._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    GrftClientError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from grft_client._ops import image_input
from grft_client.types import (
    JOB_STATUSES,
    TERMINAL_STATUSES,
    Adapter,
    ChatCompletion,
    ChatCompletionChunk,
    Checkpoint,
    Deleted,
    EpochPoint,
    FileObject,
    Job,
    JobError,
    JobEvent,
    JobMetrics,
    LabelScore,
    Model,
    Page,
    Prediction,
    Progress,
    StepPoint,
)

__all__ = [
    "JOB_STATUSES",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Adapter",
    "AsyncClient",
    "ChatCompletion",
    "ChatCompletionChunk",
    "AuthenticationError",
    "BadRequestError",
    "Checkpoint",
    "Client",
    "ClientConfig",
    "ConfigurationError",
    "ConflictError",
    "Deleted",
    "FileObject",
    "GrftClientError",
    "InternalServerError",
    "Job",
    "JobError",
    "JobEvent",
    "JobMetrics",
    "EpochPoint",
    "StepPoint",
    "LabelScore",
    "Model",
    "NotFoundError",
    "Page",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Prediction",
    "Progress",
    "TextCompletion",
    "Usage",
    "RateLimitError",
    "UnprocessableEntityError",
    "config_path",
    "image_input",
    "read_profiles",
    "resolve",
    "save_profile",
]
