"""adapters: ORM models and tenant-scoped queries."""
