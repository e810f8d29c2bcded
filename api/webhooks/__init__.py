"""``/v1/webhooks``: an organization's webhook endpoints, their delivery log and test events."""
