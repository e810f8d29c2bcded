"""A real job (tiny-bert on a small CSV, through ``worker.tasks``) reports every phase as it goes:
validating, preparing, evaluating, selecting, tuning (its learning rate is "auto"), training; epochs
count from 1 in its events; the job object shows the chosen values and ``done`` at the end."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from api.jobs.schemas import Job as JobView
from domain.adapters.models import Adapter
from domain.db import session_scope
from domain.jobs import lifecycle
from domain.jobs.models import JobEvent
from domain.settings import Settings
from grft_core.method.config import GRFTConfig
from tests.worker.conftest import METHOD, MakeJob, Sent, get_job, upload
from worker import tasks

# Six epochs of 6 steps: 36 training steps leave 10 (30 %) for the search, its 5 rates two steps each.
AUTO_LR = GRFTConfig.from_dict({**METHOD, "epochs": 6, "checkpoint_every": 12, "auto": ["lr"]}).to_dict()


class Writes:
    """Every ``progress`` a heartbeat wrote, in order (the heartbeat thread's own beats carry none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[dict[str, Any]] = []
        original = lifecycle.heartbeat

        def heartbeat(session: Any, lease: Any, **progress: Any) -> Any:
            if "progress" in progress:
                self.seen.append(dict(progress["progress"]))
            return original(session, lease, **progress)

        monkeypatch.setattr(lifecycle, "heartbeat", heartbeat)

    def of(self, phase: str) -> list[dict[str, Any]]:
        return [p for p in self.seen if p["phase"] == phase]

    def order(self) -> list[str]:
        phases: list[str] = []
        for p in self.seen:
            if p["phase"] not in phases:
                phases.append(p["phase"])
        return phases


def events_of(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        return list(rows)


def kind(event: JobEvent) -> str:
    return str((event.data or {}).get("kind", event.type))


def test_every_phase_reports_progress_and_auto_values_are_chosen(
    settings: Settings, make_job: MakeJob, tenant: str, dataset: Any, sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    writes = Writes(monkeypatch)
    job_id = make_job(upload(settings, tenant, dataset), method=AUTO_LR)
    waiting = JobView.of(get_job(settings, job_id))
    assert waiting.hyperparameters.learning_rate_multiplier == "auto"
    assert waiting.progress.phase == "validating"

    assert tasks.validate_job(job_id) == "queued"
    assert [(p["done"], p["total"]) for p in writes.of("validating")] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert JobView.of(get_job(settings, job_id)).progress.phase == "queued"

    assert tasks.run_job(job_id) == "succeeded"

    assert writes.order() == ["validating", "preparing", "evaluating", "selecting", "tuning", "training"]
    for phase in ("selecting", "tuning", "training"):
        last = writes.of(phase)[-1]
        assert last["total"], phase
        assert last["done"] == last["total"], (phase, writes.of(phase))
        assert all(p["total"] is None or 0 <= p["done"] <= p["total"] for p in writes.of(phase))
    assert writes.of("selecting")[-1]["eta_seconds"] == 0
    assert writes.of("training")[-1]["total"] == 36
    assert all(p["eta_seconds"] is not None for p in writes.of("training"))
    assert writes.of("tuning")[-1]["done"] == 10  # five rates, two steps each: within 30 % of 36 steps

    job = get_job(settings, job_id)
    shown = JobView.of(job)
    assert shown.progress.phase == "done"
    assert shown.progress.fraction == 1.0
    assert (shown.progress.done, shown.progress.total) == (36, 36)
    assert job.result is not None
    chosen = job.result["hyperparameters"]["learning_rate"]
    assert chosen in (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2)
    assert shown.hyperparameters.learning_rate_multiplier == pytest.approx(chosen / 1e-3)
    assert shown.method["grft"]["hyperparameters"]["learning_rate"] == chosen
    with session_scope(settings.database_url) as session:
        adapter = session.get_one(Adapter, job.adapter_id)
        assert adapter.config["config"]["lr"] == chosen
        assert adapter.config["autotune"]["chosen"] == {"lr": chosen}

    events = events_of(settings, job_id)
    kinds = [kind(e) for e in events]
    for phase in ("validating", "preparing", "selecting", "tuning", "training"):
        assert any(kind(e) == "phase" and (e.data or {}).get("phase") == phase for e in events), phase
    tuned = [e for e in events if kind(e) == "autotune"]
    assert len(tuned) == 1
    assert tuned[0].message.startswith(f"auto learning_rate={chosen:g}: tried ")
    assert tuned[0].data is not None
    assert len(tuned[0].data["trials"]) == 5
    assert kinds.index("autotune") < kinds.index("metrics")

    metrics = [e.data for e in events if e.type == "metrics" and e.data]
    per_epoch = [m for m in metrics if "valid_loss" in m]
    per_step = [m for m in metrics if "lr" in m]
    assert [m["epoch"] for m in per_epoch] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in per_epoch] == [6, 12, 18, 24, 30, 36]
    assert [m["epoch"] for m in per_step] == [e for e in range(1, 7) for _ in range(6)]
    assert all(0.0 <= m["train_accuracy"] <= 1.0 for m in per_step)
    epoch_messages = [e.message for e in events if e.type == "metrics" and e.message.startswith("Epoch")]
    assert epoch_messages[0].startswith("Epoch 1: ")
