"""The worker's fixtures (a fresh Postgres database, settings, tenant, datasets, tasks run in-process)."""

from tests.worker.conftest import (  # noqa: F401  (fixtures shared with tests/worker)
    database_url,
    dataset,
    make_job,
    sent,
    settings,
    tenant,
)
