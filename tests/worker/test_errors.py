"""Errors inform without leaking: a job's error and events carry a code and a human message, never SQL,
parameters, a stack, a lease token or a local path; the worker's log keeps the detail under a reference."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from domain.settings import Settings
from grft_core.errors import DatasetRejected
from tests.worker.conftest import MakeJob, Sent, get_job
from tests.worker.test_runner import job_events
from worker import runner, tasks
from worker.errors import public_error

REFERENCE = re.compile(r"^internal error \(reference ([0-9a-f]{12})\)$")
TOKEN = "9f1c2e7a4b5d6e8f0a1b2c3d4e5f6a7b"
STATEMENT = "UPDATE jobs SET heartbeat_at=%(heartbeat_at)s WHERE jobs.lease_token = %(lease_token_1)s"


def sql_error(kind: type[Exception] = OperationalError, token: str = TOKEN) -> Exception:
    params = {"heartbeat_at": "2024-05-01 10:00:00", "lease_token_1": token}
    return kind(STATEMENT, params, Exception("server closed the connection unexpectedly"))  # type: ignore[call-arg]


class TestPublicError:
    def test_a_database_error_becomes_a_reference(self, caplog: pytest.LogCaptureFixture) -> None:
        exc = sql_error()
        assert "UPDATE jobs" in str(exc)
        assert TOKEN in str(exc)  # what used to reach the tenant

        with caplog.at_level(logging.ERROR, logger="worker.errors"):
            error = public_error(exc, context="attempt 1 of ftjob-x")

        assert error.code == "error"
        assert error.param is None
        match = REFERENCE.match(error.message)
        assert match is not None
        assert "UPDATE" not in error.message
        assert TOKEN not in error.message
        # The worker's log holds the detail, findable by the reference.
        logged = caplog.text
        assert match.group(1) in logged
        assert "UPDATE jobs" in logged
        assert TOKEN in logged
        assert "attempt 1 of ftjob-x" in logged
        assert "Traceback" in logged or caplog.records[-1].exc_info is not None

    def test_two_errors_get_two_references(self) -> None:
        first, second = public_error(RuntimeError("a")), public_error(RuntimeError("a"))
        assert first.message != second.message

    def test_an_os_error_hides_its_path(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        path = tmp_path / "home" / "work" / "ftjob-1-run-abc" / "data" / "train.csv"
        with caplog.at_level(logging.ERROR, logger="worker.errors"):
            error = public_error(OSError(28, "No space left on device", str(path)))
        assert error.code == "error"
        assert REFERENCE.match(error.message)
        assert str(tmp_path) not in error.message
        assert str(path) in caplog.text

    def test_a_dataset_error_keeps_its_message_but_not_the_paths(self, tmp_path: Path) -> None:
        work = tmp_path / "home" / "work" / f"ftjob-1-validate-{TOKEN[:12]}"
        local = work / "extracted" / "digits" / "3" / "broken.png"
        exc = DatasetRejected(f"cannot read image {local}: the file is corrupt", param=str(local))

        error = public_error(exc, roots=[tmp_path / "home"], secrets=[TOKEN])

        assert error.code == "user_error"
        assert error.message == "cannot read image broken.png: the file is corrupt"
        assert error.param == "broken.png"

    def test_local_copies_take_the_tenants_names(self, tmp_path: Path) -> None:
        copy = tmp_path / "work" / "file-abc123.csv"
        tenants_uri = (tmp_path / "datasets" / "news.csv").as_uri()  # also under the temporary folder
        exc = DatasetRejected(f"{copy.as_uri()} and {tenants_uri} hold different label sets", param=str(copy))

        error = public_error(exc, names={copy.as_uri(): "file-abc123", tenants_uri: tenants_uri})

        assert error.message == f"file-abc123 and {tenants_uri} hold different label sets"
        assert error.param == "file-abc123"

    def test_roots_in_every_spelling(self, tmp_path: Path) -> None:
        artifacts = (tmp_path / "artifacts").as_uri()
        model_dir = "/srv/grft/models"
        exc = DatasetRejected(
            f"unreadable model index {model_dir}/index.json; see {artifacts}/files/t/file-1", param=None
        )
        error = public_error(exc, roots=[artifacts, model_dir])
        assert error.message == "unreadable model index index.json; see file-1"
        assert tempfile.gettempdir() not in error.message


# --- through the worker ---------------------------------------------------------------------------------


def _leaks(settings: Settings, job_id: str, token: str) -> list[str]:
    """Every text the tenant can read about the job that shows something internal."""
    job = get_job(settings, job_id)
    texts = [e.message for e in job_events(settings, job_id)]
    if job.error:
        texts += [str(job.error.get("message")), str(job.error.get("param"))]
    needles = (
        "UPDATE",
        "SELECT",
        "lease_token",
        token,
        token[:12],
        str(settings.home),
        tempfile.gettempdir(),
    )
    needles += ("Traceback", settings.artifact_url)
    return [t for t in texts for n in needles if n and n in t]


class Raise:
    """Stands in for a library call and raises what ``make(token)`` builds with the job's live lease token."""

    def __init__(self, settings: Settings, job_id: str, make: Any) -> None:
        self.settings, self.job_id, self.make = settings, job_id, make
        self.token = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = get_job(self.settings, self.job_id).lease_token
        assert token
        self.token = token
        raise self.make(token)


class TestRecordedErrors:
    def test_database_error_during_validation(
        self,
        settings: Settings,
        make_job: MakeJob,
        dataset: Any,
        sent: Sent,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        job_id = make_job(dataset.as_uri())
        fake = Raise(settings, job_id, lambda token: sql_error(OperationalError, token))
        monkeypatch.setattr(runner, "load_train_val", fake)

        with caplog.at_level(logging.ERROR):
            assert tasks.validate_job(job_id) == "failed"

        job = get_job(settings, job_id)
        assert job.error is not None
        assert job.error["code"] == "error"
        match = REFERENCE.match(job.error["message"])
        assert match is not None
        assert _leaks(settings, job_id, fake.token) == []
        assert match.group(1) in caplog.text
        assert "UPDATE jobs" in caplog.text
        assert fake.token in caplog.text

    def test_database_error_during_a_run(
        self,
        settings: Settings,
        make_job: MakeJob,
        dataset: Any,
        sent: Sent,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        job_id = make_job(dataset.as_uri(), status="queued", max_attempts=1)
        # Not a lost connection (that one is waited out): an error the database answered, SQL and all.
        fake = Raise(settings, job_id, lambda token: sql_error(ProgrammingError, token))
        monkeypatch.setattr(runner, "train_to_folder", fake)

        with caplog.at_level(logging.ERROR):
            assert tasks.run_job(job_id) == "failed"

        job = get_job(settings, job_id)
        assert job.error is not None
        assert job.error["code"] == "error"
        assert REFERENCE.match(job.error["message"])
        assert _leaks(settings, job_id, fake.token) == []
        assert "UPDATE jobs" in caplog.text

    def test_os_error_with_a_worker_path(
        self, settings: Settings, make_job: MakeJob, dataset: Any, sent: Sent, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        job_id = make_job(dataset.as_uri(), status="queued", max_attempts=2)

        def make(token: str) -> OSError:
            path = (
                settings.home
                / "work"
                / f"{job_id}-run-{token[:12]}"
                / "adapter"
                / "adapter_model.safetensors"
            )
            return OSError(28, "No space left on device", str(path))

        fake = Raise(settings, job_id, make)
        monkeypatch.setattr(runner, "train_to_folder", fake)

        assert tasks.run_job(job_id) == "queued"  # an internal error: retried while attempts remain
        assert tasks.run_job(job_id) == "failed"

        messages = [e.message for e in job_events(settings, job_id)]
        assert any(
            re.match(r"Attempt 1 failed \(internal error \(reference [0-9a-f]{12}\)\)", m) for m in messages
        )
        assert _leaks(settings, job_id, fake.token) == []

    def test_dataset_error_with_a_temp_path(
        self, settings: Settings, make_job: MakeJob, dataset: Any, sent: Sent, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        job_id = make_job(dataset.as_uri())

        def make(token: str) -> DatasetRejected:
            work = settings.home / "work" / f"{job_id}-validate-{token[:12]}"
            extracted = Path(tempfile.gettempdir()) / "grft-data-x1y2" / "extracted" / "bad.csv"
            return DatasetRejected(
                f"{extracted}: malformed CSV on line 3 (copied from {work})", param=str(extracted)
            )

        fake = Raise(settings, job_id, make)
        monkeypatch.setattr(runner, "load_train_val", fake)

        assert tasks.validate_job(job_id) == "failed"

        job = get_job(settings, job_id)
        assert job.error is not None
        assert job.error["code"] == "user_error"
        assert job.error["message"].startswith("bad.csv: malformed CSV on line 3")
        assert job.error["param"] == "bad.csv"
        assert _leaks(settings, job_id, fake.token) == []
