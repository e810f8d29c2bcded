"""auth: ORM models and tenant-scoped queries."""
