"""Reading ``/metrics`` as samples."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def samples(client: Any, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` on the client's ``/metrics``."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    ]


def value(client: Any, name: str, **labels: str) -> float:
    """The sample ``name`` whose labels include ``labels`` (0 when there is none)."""
    found = [v for sample_labels, v in samples(client, name) if labels.items() <= sample_labels.items()]
    assert len(found) <= 1, found
    return found[0] if found else 0.0
