"""The grft service: FastAPI app, its domain (DB models, repositories, services) and settings."""
