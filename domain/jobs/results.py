"""What a job leaves besides its adapter: OpenAI's results file and the count of tokens trained on.

* The results file is a CSV (``step, train_loss, train_accuracy, valid_loss,
  valid_mean_token_accuracy``), one row per step the job's ``metrics`` events report, stored as a File
  of purpose ``fine-tune-results`` when the job succeeds and listed in its ``result_files``.
* ``trained_tokens``: the tokens each epoch reads (non-padding tokens after truncation, counted once
  when the files are validated) times the epochs.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.artifacts import ArtifactStore
from domain.db import utcnow
from domain.files.models import File
from domain.ids import new_id
from domain.jobs.models import JobEvent
from grft_core.data.preprocess import make_preprocessor
from grft_core.models.registry import ModelSpec

RESULTS_PURPOSE = "fine-tune-results"
COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# Our event names for the CSV's columns (OpenAI's names are accepted as they are).
_ALIASES = {
    "val_loss": "valid_loss",
    "val_accuracy": "valid_mean_token_accuracy",
    "valid_accuracy": "valid_mean_token_accuracy",
}
_TOKEN_BATCH = 256


def results_csv(session: Session, job_id: str) -> bytes:
    """The job's results CSV, one row per reported step, oldest first. A step's own training loss
    wins over its epoch's mean; validation numbers come from the epoch that ended at that step."""
    stmt = (
        select(JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        .order_by(JobEvent.seq)
    )
    rows: dict[int, dict[str, float]] = {}
    for data in session.scalars(stmt):
        if not isinstance(data, dict) or not isinstance(data.get("step"), int):
            continue
        row = rows.setdefault(int(data["step"]), {})
        for name, value in data.items():
            column = _ALIASES.get(name, name)
            if column in COLUMNS[1:] and _number(value) and column not in row:
                row[column] = float(value)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for step in sorted(rows):
        writer.writerow([step, *(_cell(rows[step].get(c)) for c in COLUMNS[1:])])
    return out.getvalue().encode()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def store_results_file(store: ArtifactStore, tenant_id: str, job_id: str, content: bytes) -> File:
    """Store ``content`` as the tenant's file (``files/<tenant>/<id>``, as uploads are) and return its
    row, not yet added: the caller adds it in the commit that ends the job, and removes the blob if
    that commit does not happen."""
    file_id = new_id("file")
    key = f"files/{tenant_id}/{file_id}"
    size, digest = store.put_stream(key, [content], len(content))
    return File(
        id=file_id,
        tenant_id=tenant_id,
        filename=f"{job_id}-results.csv",
        purpose=RESULTS_PURPOSE,
        bytes=size,
        sha256=digest,
        uri=store.uri(key),
        created_at=utcnow(),
    )


def tokens_per_epoch(
    spec: ModelSpec,
    items: Sequence[Any],
    max_length: int | None,
    should_stop: Callable[[], bool] | None = None,
) -> int | None:
    """Tokens one epoch of ``items`` feeds a text model (truncated as training truncates them, padding
    not counted); None for image models."""
    if spec.modality != "text":
        return None
    preprocessor = make_preprocessor(spec, max_length=max_length)
    total = 0
    for start in range(0, len(items), _TOKEN_BATCH):
        if should_stop is not None and should_stop():
            return None
        encoded = preprocessor(list(items[start : start + _TOKEN_BATCH]))
        total += int(encoded["attention_mask"].sum())
    return total


def validation_summary(session: Session, job_id: str) -> dict[str, Any]:
    """What the job's file validation recorded (classes, examples, tokens per epoch), or ``{}``."""
    stmt = select(JobEvent.data).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc())
    for data in session.scalars(stmt):
        if isinstance(data, dict) and isinstance(data.get("classes"), list):
            return data
    return {}
