"""Which URLs may receive webhooks: the dataset-URI network policy (``domain.dataset_uris``) with
``http`` allowed too and its own allow-list, ``webhook_allow_hosts``.

Checked twice, like dataset URIs: when an endpoint is created (a clear error for the tenant) and by the
worker right before each delivery (a name may resolve elsewhere by then, DNS rebinding); the worker
connects to the addresses the check returned and resolves nothing itself.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from urllib.parse import urlsplit

from domain.dataset_uris import ParsedUri, Resolver, check_dataset_uri
from domain.settings import Settings
from grft_core.errors import DatasetRejected, GrftError

SCHEMES = ("https", "http")
MAX_URL_CHARS = 2048


class WebhookRejected(GrftError):
    """A webhook URL the network policy refuses (scheme, credentials, a non-public address)."""

    status_code = 422
    code = "invalid_webhook_url"


def check_webhook_url(
    url: str, settings: Settings, *, field: str = "url", resolve: Resolver = socket.getaddrinfo
) -> ParsedUri:
    """Accept ``url`` as a webhook target, or raise ``WebhookRejected`` naming ``field``.

    The returned ``addresses`` are the ones the host resolved to when checked: connect to those.
    """
    if len(url) > MAX_URL_CHARS:
        raise WebhookRejected(f"{field} must be at most {MAX_URL_CHARS} characters", param=field)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise WebhookRejected(f"{field} is not a valid URL", param=field) from exc
    if "://" not in url or parts.scheme not in SCHEMES:
        raise WebhookRejected(f"{field} must be an https:// or http:// URL", param=field)
    if parts.fragment or url.endswith("#"):
        raise WebhookRejected(f"{field} must not carry a fragment", param=field)
    # The same host rules as an https dataset URI, against the webhook allow-list.
    policy = settings.model_copy(update={"dataset_allow_hosts": settings.webhook_allow_hosts})
    as_https = "https" + url[len(parts.scheme) :]
    try:
        checked = check_dataset_uri(as_https, policy, field=field, resolve=resolve)
    except DatasetRejected as exc:
        message = exc.message.replace("https:// URIs", "URLs").replace("URIs", "URLs")
        raise WebhookRejected(message, param=field) from exc
    return replace(checked, uri=url, scheme=parts.scheme)


def default_port(parsed: ParsedUri) -> int:
    """The port a request to ``parsed`` connects to."""
    return urlsplit(parsed.uri).port or (443 if parsed.scheme == "https" else 80)


__all__ = ["SCHEMES", "WebhookRejected", "check_webhook_url", "default_port"]
