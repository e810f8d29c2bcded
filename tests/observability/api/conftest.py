"""The API test fixtures (``tests/api/conftest.py``): a real Postgres database for this directory's
session, Redis db 15, an app per test and keys for two tenants."""

from tests.api.conftest import (  # noqa: F401  (fixtures)
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
