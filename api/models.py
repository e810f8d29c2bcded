"""Every ORM model, imported in one place for Alembic and ``Base.metadata``."""

from api.adapters.models import Adapter
from api.auth.models import ApiKey, Tenant
from api.db import Base
from api.files.models import File
from api.jobs.models import Job, JobCheckpoint, JobEvent

__all__ = ["Adapter", "ApiKey", "Base", "File", "Job", "JobCheckpoint", "JobEvent", "Tenant"]
