"""The service fixtures of ``tests.api`` (they replace the worker ones of ``tests/integrations``)."""

from __future__ import annotations

from tests.api.conftest import (  # noqa: F401  (the service fixtures, shared)
    api_key,
    app,
    auth,
    client,
    connection,
    database_url,
    db,
    engine,
    other_key,
    settings,
)
from tests.api.jobs.conftest import broker, file_id  # noqa: F401
