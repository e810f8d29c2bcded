"""jobs: ORM models and tenant-scoped queries."""
