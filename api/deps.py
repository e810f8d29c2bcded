"""``Annotated`` dependency aliases: settings, a request-scoped session, the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from domain.auth.keys import authenticate, local_tenant
from domain.auth.models import Tenant
from domain.db import session_scope
from domain.settings import Settings


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """One session per request; committed once by the request wrapper, never by services."""
    with session_scope(settings.database_url) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_tenant(
    session: SessionDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Tenant:
    if settings.auth_disabled:
        return local_tenant(session)
    return authenticate(session, authorization)


TenantDep = Annotated[Tenant, Depends(get_tenant)]
