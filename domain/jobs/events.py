"""A job's event log (what ``GET …/events`` lists): every writer appends through ``add_event``.

``type`` stays within OpenAI's values, ``message`` or ``metrics``, so typed clients read every event;
what kind of message it is (a selection, a checkpoint) goes in ``data["kind"]``, with the details.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.ids import new_id
from domain.jobs.models import JobEvent

#: OpenAI's event types.
EVENT_TYPES = ("message", "metrics")


def clean_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (Postgres JSON refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    type: str = "message",
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    if type not in EVENT_TYPES:  # our own kinds ride in the data
        data = {"kind": type, **(data or {})}
        type = "message"
    session.add(
        JobEvent(
            id=new_id("ftevent"),
            job_id=job_id,
            created_at=utcnow(),
            level=level,
            type=type,
            message=message[:2048],
            data=clean_json(data),
        )
    )
