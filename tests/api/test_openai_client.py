"""The official ``openai`` client, pointed at a real server, creates, lists, retrieves and cancels jobs
and lists their events: the shapes are OpenAI's where a client depends on them.

The server runs with uvicorn in a thread against the session's test database (requests commit for
real, so this module deletes its tenant, and with it every row it made, at the end).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import redis
import uvicorn
from openai import OpenAI
from sqlalchemy import delete, update

from api.main import create_app
from domain.auth.keys import create_key
from domain.auth.models import Tenant
from domain.auth.repository import tenant_by_name
from domain.db import session_scope
from domain.jobs.models import Job
from domain.settings import Settings
from tests.api.conftest import REDIS_URL

CSV = b"text,label\ngoal match team,sport\nmarket shares profit,business\nfilm actor music,arts\n"
GRFT = {"type": "grft", "grft": {"hyperparameters": {"k": 2, "l2_lambda": 0.001}}}


@dataclass
class Live:
    client: OpenAI
    database_url: str
    tenant_id: str
    csv: Path


@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("openai")
    queue = f"openai-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        env="test",
        secret_key="test-secret",
        home=root / "home",
        database_url=database_url,
        broker_url=REDIS_URL,
        artifact_url=(root / "artifacts").as_uri(),
        queue=queue,
    )
    tenant_name = f"openai-{uuid.uuid4().hex[:8]}"
    with session_scope(database_url) as session:
        key = create_key(session, tenant_name)
    with session_scope(database_url) as session:
        tenant = tenant_by_name(session, tenant_name)
        assert tenant is not None
        tenant_id = tenant.id

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes it over
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"

    csv = root / "train.csv"
    csv.write_bytes(CSV)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)
    try:
        yield Live(client, database_url, tenant_id, csv)
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        with session_scope(database_url) as session:
            session.execute(delete(Tenant).where(Tenant.id == tenant_id))  # cascades to keys, files, jobs
        broker = redis.Redis.from_url(REDIS_URL)
        broker.delete(queue)
        broker.close()


def set_status(live: Live, job_id: str, status: str) -> None:
    with session_scope(live.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status))


class TestFiles:
    def test_create_list_retrieve_download_delete(self, live: Live) -> None:
        with live.csv.open("rb") as handle:
            created = live.client.files.create(file=handle, purpose="fine-tune")

        assert created.id.startswith("file-")
        assert (created.object, created.bytes, created.filename) == ("file", len(CSV), "train.csv")
        assert (created.purpose, created.status) == ("fine-tune", "processed")
        assert live.client.files.retrieve(created.id) == created
        assert created.id in [f.id for f in live.client.files.list()]
        assert live.client.files.content(created.id).read() == CSV
        deleted = live.client.files.delete(created.id)
        assert (deleted.id, deleted.deleted) == (created.id, True)
        with pytest.raises(openai.NotFoundError):
            live.client.files.retrieve(created.id)


class TestJobs:
    def test_create_retrieve_list_cancel_events(self, live: Live) -> None:
        with live.csv.open("rb") as handle:
            file = live.client.files.create(file=handle, purpose="fine-tune")

        job = live.client.fine_tuning.jobs.create(
            model="tiny-bert",
            training_file=file.id,
            method=GRFT,  # type: ignore[arg-type]  # "grft" is ours, beyond the client's literals
            seed=3,
            suffix="oa",
            metadata={"source": "openai-client"},
        )

        assert job.id.startswith("ftjob-")
        assert (job.object, job.status, job.model, job.training_file) == (
            "fine_tuning.job", "validating_files", "tiny-bert", file.id,
        )  # fmt: skip
        assert (job.seed, job.organization_id) == (3, live.tenant_id)
        assert job.to_dict()["user_provided_suffix"] == "oa"
        assert job.metadata == {"source": "openai-client"}
        assert job.method is not None
        assert job.method.type == "grft"  # type: ignore[comparison-overlap]
        assert job.to_dict()["method"]["grft"]["hyperparameters"]["k"] == 2
        assert job.to_dict()["progress"]["steps_completed"] == 0
        assert live.client.fine_tuning.jobs.retrieve(job.id).to_dict() == job.to_dict()

        listed = live.client.fine_tuning.jobs.list(limit=5, metadata={"source": "openai-client"})
        assert [j.id for j in listed.data] == [job.id]
        assert listed.has_more is False

        events = live.client.fine_tuning.jobs.list_events(job.id, limit=10)
        assert events.data[-1].message == f"Created fine-tuning job: {job.id}"
        assert {e.object for e in events.data} == {"fine_tuning.job.event"}

        cancelled = live.client.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        assert cancelled.finished_at is not None
        with pytest.raises(openai.ConflictError):
            live.client.fine_tuning.jobs.cancel(job.id)

    def test_cancelling_status_reaches_the_client(self, live: Live) -> None:
        with live.csv.open("rb") as handle:
            file = live.client.files.create(file=handle, purpose="fine-tune")
        job = live.client.fine_tuning.jobs.create(model="tiny-bert", training_file=file.id)
        set_status(live, job.id, "running")

        cancelling = live.client.fine_tuning.jobs.cancel(job.id)

        # Not one of the client's literals: it keeps the value rather than failing.
        statuses = [cancelling.status, live.client.fine_tuning.jobs.retrieve(job.id).status]
        assert statuses == ["cancelling", "cancelling"]
        with pytest.raises(openai.ConflictError):  # a job still reads the file
            live.client.files.delete(file.id)

    def test_errors_carry_code_and_param(self, live: Live) -> None:
        with live.csv.open("rb") as handle:
            file = live.client.files.create(file=handle, purpose="fine-tune")

        with pytest.raises(openai.NotFoundError) as missing:
            live.client.fine_tuning.jobs.create(model="no-such-model", training_file=file.id)
        with pytest.raises(openai.UnprocessableEntityError) as bad_k:
            live.client.fine_tuning.jobs.create(
                model="tiny-bert",
                training_file=file.id,
                method={"type": "grft", "grft": {"hyperparameters": {"k": 0}}},  # type: ignore[arg-type]
            )
        with pytest.raises(openai.NotFoundError):
            live.client.fine_tuning.jobs.retrieve("ftjob-does-not-exist")

        assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
        assert (bad_k.value.code, bad_k.value.param) == ("invalid_request", "method.grft.hyperparameters.k")
