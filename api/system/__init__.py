"""Health, readiness and the model registry endpoints."""
