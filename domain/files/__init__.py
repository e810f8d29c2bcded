"""files: ORM models and tenant-scoped queries."""
