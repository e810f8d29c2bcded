"""The service fixtures (real Postgres, two tenants' keys, stored adapters), shared with ``tests/api``."""

from __future__ import annotations

from tests.api.conftest import (  # noqa: F401  (fixtures)
    api_key,
    app,
    auth,
    client,
    connection,
    database_url,
    db,
    engine,
    other_auth,
    other_key,
    settings,
)
from tests.api.fixtures import add, cnn10, digit_pngs  # noqa: F401  (fixtures)
