"""Every ORM model, imported in one place for Alembic and ``Base.metadata``."""

from domain.adapters.models import Adapter
from domain.auth.models import ApiKey, Tenant
from domain.db import Base
from domain.files.models import File
from domain.jobs.models import Job, JobCheckpoint, JobEvent
from domain.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "Adapter",
    "ApiKey",
    "Base",
    "File",
    "Job",
    "JobCheckpoint",
    "JobEvent",
    "Tenant",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
