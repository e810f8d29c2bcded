"""The worker test fixtures (``tests/worker/conftest.py``): a real Postgres database, Redis db 14,
per-test settings, a tenant, a small text CSV and jobs of ``tiny-bert``."""

from tests.worker.conftest import (  # noqa: F401  (fixtures)
    database_url,
    dataset,
    make_job,
    sent,
    settings,
    tenant,
)
