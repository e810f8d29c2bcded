"""The live bar of ``grft jobs follow``, rendered from a recorded job: its events and polled objects,
as a server sends them, through the phases to the end."""

from __future__ import annotations

import io

from rich.console import Console

from api.cli.client.follow import Bar, FollowState, columns, event_line, final_line, status_line
from grft_client import Job, JobEvent

JOB_ID = "ftjob-rec"


def job(status: str, **progress: object) -> Job:
    body = {
        "id": JOB_ID, "created_at": 1_700_000_000, "model": "tiny-bert", "status": status,
        "training_file": "file-1", "progress": {"steps_completed": 0, "total_steps": None,
                                                "seconds_remaining": None, **progress},
    }  # fmt: skip
    if status == "succeeded":
        body.update(adapter_id="adapter-rec", trainable_params=1234)
    if status == "failed":
        body["error"] = {"code": "user_error", "message": "no 'label' column", "param": "training_file"}
    return Job.model_validate(body)


def event(n: int, message: str, type: str = "message", **data: object) -> JobEvent:
    return JobEvent(
        id=f"ftevent-{n}", created_at=1_700_000_000 + n, message=message, type=type, data=data or None
    )


# A short job as recorded: (what arrived, the bar's line after it).
RECORDED: list[tuple[Job | JobEvent, str]] = [
    (job("validating_files"), "validating  0/?  loss -  ETA -"),
    (event(1, f"Created fine-tuning job: {JOB_ID}"), "validating  0/?  loss -  ETA -"),
    (job("validating_files", phase="validating", done=1, total=3), "validating  1/3  loss -  ETA -"),
    (job("queued"), "queued  0/?  loss -  ETA -"),
    (job("running"), "selecting  0/?  loss -  ETA -"),
    (event(2, "Selected 24 rows in 12 matrices", "selection", axis="rows", selected=24),
     "training  0/?  loss -  ETA -"),
    (event(3, "Step 4/12: training loss=1.0986", "metrics", step=4, epoch=1, train_loss=1.0986, lr=0.005),
     "training  4/12  loss 1.0986  ETA -"),
    (job("running", steps_completed=4, total_steps=12, seconds_remaining=8.4),
     "training  4/12  loss 1.0986  ETA 0:00:08"),
    (event(4, "Epoch 1: train loss=1.05, valid loss=1.01, valid accuracy=0.6667", "metrics", epoch=1, step=6,
           train_loss=1.05, valid_loss=1.01, valid_accuracy=0.6667),
     "training  6/12  loss 1.0986  val acc 0.667  ETA 0:00:08"),
    (event(5, "Checkpoint saved at step 8", "checkpoint", step=8),
     "training  6/12  loss 1.0986  val acc 0.667  ETA 0:00:08"),
    (event(6, "Step 12/12: training loss=0.5012", "metrics", step=12, epoch=2, train_loss=0.5012, lr=0.0),
     "training  12/12  loss 0.5012  val acc 0.667  ETA 0:00:08"),
    (job("succeeded", steps_completed=12, total_steps=12, seconds_remaining=0.0),
     "succeeded  12/12  loss 0.5012  val acc 0.667  ETA -"),
]  # fmt: skip


class TestFollowState:
    def test_each_recorded_update_renders_as_expected(self) -> None:
        state = FollowState(JOB_ID)
        for item, expected in RECORDED:
            if isinstance(item, Job):
                state.on_job(item)
            else:
                state.on_event(item)
            assert status_line(state) == expected, item

    def test_phases_a_server_reports_are_shown_with_their_units(self) -> None:
        state = FollowState(JOB_ID)
        state.on_job(job("running", phase="selecting", done=3, total=8, eta_seconds=65.0))
        assert columns(state) == {
            "phase": "selecting", "steps": "3/8", "loss": "loss -", "accuracy": "", "eta": "ETA 0:01:05",
        }  # fmt: skip
        state.on_event(event(7, "Training", "phase", phase="training"))
        assert columns(state)["phase"] == "training"
        state.on_job(job("cancelling", steps_completed=2, total_steps=9))
        assert status_line(state) == "cancelling  2/9  loss -  ETA -"

    def test_lines_around_the_bar(self) -> None:
        assert event_line(event(0, "hello")) == "22:13:20 hello"
        warning = JobEvent(id="e", created_at=1_700_000_000, level="warning", message="The job was cancelled")
        assert event_line(warning) == "22:13:20 warning: The job was cancelled"
        assert final_line(job("succeeded")) == (
            f"job {JOB_ID} succeeded: adapter adapter-rec (1,234 trainable parameters)"
        )
        assert final_line(job("failed")) == f"job {JOB_ID} failed: user_error: no 'label' column"


class TestBar:
    def test_the_rich_bar_shows_phase_steps_loss_and_eta(self) -> None:
        screen = io.StringIO()
        console = Console(file=screen, force_terminal=True, width=120, color_system=None)
        bar = Bar(console)
        state = FollowState(JOB_ID)
        bar.start()
        for item, _ in RECORDED[:8]:
            if isinstance(item, Job):
                state.on_job(item)
            else:
                state.on_event(item)
                bar.print(event_line(item))
            bar.update(state)
        bar.stop()
        text = screen.getvalue()
        assert "Step 4/12: training loss=1.0986" in text
        last = [line for line in text.splitlines() if "training" in line and "ETA" in line][-1]
        for part in ("training", "4/12", "loss 1.0986", "ETA 0:00:08"):
            assert part in last
