"""Webhooks: an organization's endpoints, the signed events a job's end sends them, and the outbox
that carries each one to its endpoint (``outbox``: written with the job's end; ``deliveries``: the
attempts and their verdicts; ``signing``: Standard Webhooks signatures; ``urls``: the network policy).
"""

from domain.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

#: The Celery task that sends one delivery (sent by name: the API and the reconciler never import it).
DELIVER_WEBHOOK = "grft.deliver_webhook"

__all__ = ["DELIVER_WEBHOOK", "WebhookAttempt", "WebhookDelivery", "WebhookEndpoint", "WebhookEvent"]
