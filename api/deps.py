"""``Annotated`` dependency aliases: settings, a request-scoped session, the caller's tenant, and the
process-wide services (artifact store, inference service, rate limiter, metrics).

The services are built once by the app's lifespan (``api.main``) and held in one ``Services`` object;
routes only ever receive them through the aliases below.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.errors import NotFound
from api.inference.limits import RateLimiter
from api.inference.service import InferenceService
from api.metrics import Metrics
from domain.artifacts import ArtifactStore
from domain.auth.keys import authenticate, local_tenant
from domain.auth.models import Tenant
from domain.db import session_scope
from domain.logging import set_tenant as set_log_tenant
from domain.settings import Settings


@dataclass
class Services:
    """What one app process shares between requests; built and closed by the app's lifespan."""

    settings: Settings
    store: ArtifactStore
    inference: InferenceService
    rate_limiter: RateLimiter
    metrics: Metrics | None

    def close(self) -> None:
        """Let queued predictions finish and stop the batcher threads."""
        self.inference.close()


def get_app_settings(request: Request) -> Settings:
    # The configuration the app was assembled from (routes and middleware depend on it), so it is
    # there even before the lifespan has started the services.
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise RuntimeError("the app's services are not running: serve it with its lifespan")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_store(services: ServicesDep) -> ArtifactStore:
    return services.store


def get_inference(services: ServicesDep) -> InferenceService:
    return services.inference


def get_rate_limiter(services: ServicesDep) -> RateLimiter:
    return services.rate_limiter


def get_metrics(services: ServicesDep) -> Metrics:
    if services.metrics is None:
        raise NotFound("metrics are disabled on this server")
    return services.metrics


StoreDep = Annotated[ArtifactStore, Depends(get_store)]
InferenceDep = Annotated[InferenceService, Depends(get_inference)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """One session per request; committed once by the request wrapper, never by services."""
    with session_scope(settings.database_url) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_tenant(
    session: SessionDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Tenant:
    tenant = local_tenant(session) if settings.auth_disabled else authenticate(session, authorization)
    set_log_tenant(tenant.id)  # the request's log lines name the tenant from here on
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]
