"""The official ``openai`` client, pointed at a real server, creates, lists, retrieves and cancels jobs
and lists their events: the shapes are OpenAI's where a client depends on them.

The server runs with uvicorn in a thread against the session's test database (requests commit for
real, so this module deletes its tenant, and with it every row it made, at the end).
"""

from __future__ import annotations

import csv
import io
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis
import torch
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
from grft_core.adapters.format import load_adapter
from tests.api.conftest import REDIS_URL
from tests.conftest import make_texts
from worker.runner import run_job, validate_job

CSV = b"text,label\ngoal match team,sport\nmarket shares profit,business\nfilm actor music,arts\n"
GRFT = {"type": "grft", "grft": {"hyperparameters": {"k": 2, "l2_lambda": 0.001}}}
# Small enough to train in seconds on one core: 12 steps, a checkpoint every 2.
SMALL = {
    "k": 2, "n_epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "selection_samples": 16,
    "selection_batch_size": 8, "max_length": 16,
}  # fmt: skip


@dataclass
class Live:
    client: OpenAI
    database_url: str
    tenant_id: str
    csv: Path
    settings: Settings
    base_url: str
    key: str


@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Live]:
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
        model_dir=model_store,
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
        yield Live(client, database_url, tenant_id, csv, settings, f"http://127.0.0.1:{port}/v1", key)
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
        with pytest.raises(openai.BadRequestError) as bad_k:  # OpenAI's 400, never 422
            live.client.fine_tuning.jobs.create(
                model="tiny-bert",
                training_file=file.id,
                method={"type": "grft", "grft": {"hyperparameters": {"k": 0}}},  # type: ignore[arg-type]
            )
        with pytest.raises(openai.NotFoundError) as no_job:
            live.client.fine_tuning.jobs.retrieve("ftjob-does-not-exist")
        with pytest.raises(openai.BadRequestError) as bad_suffix:
            live.client.fine_tuning.jobs.create(model="tiny-bert", training_file=file.id, suffix="a.b")

        assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
        assert (bad_k.value.code, bad_k.value.param) == ("invalid_request", "method.grft.hyperparameters.k")
        assert (bad_suffix.value.code, bad_suffix.value.param) == ("invalid_request", "suffix")
        # OpenAI's classes of error in ``type``; our specific code stays in ``code``.
        assert [e.value.type for e in (missing, bad_k, no_job, bad_suffix)] == [
            "not_found_error", "invalid_request_error", "not_found_error", "invalid_request_error",
        ]  # fmt: skip
        with pytest.raises(openai.AuthenticationError) as anonymous:
            OpenAI(base_url=live.base_url, api_key="grft-wrong", max_retries=0).models.list()
        assert anonymous.value.type == "authentication_error"


def news_csv(path: Path) -> Path:
    """48 labelled sentences of three classes: enough for a split and a few checkpoints."""
    texts, labels = make_texts(48)
    names = ["sport", "business", "arts"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((t, names[y]) for t, y in zip(texts, labels, strict=True))
    return path


def train(live: Live, job_id: str) -> None:
    """Validate and run the job here, as a worker would (its messages are not needed)."""
    worker = live.settings.model_copy(update={"checkpoint_every": 2, "heartbeat_seconds": 0.5})
    assert validate_job(worker, job_id, lambda *_: None) == "queued"
    assert run_job(worker, job_id, lambda *_: None) == "succeeded"


def adapter_folder(live: Live, model_id: str, dest: Path) -> Path:
    """Download ``/v1/adapters/{model_id}/content`` and unpack it."""
    response = httpx.get(
        f"{live.base_url}/adapters/{model_id}/content", headers={"Authorization": f"Bearer {live.key}"}
    )
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def predict(live: Live, model_ids: list[str]) -> list[str]:
    items = [{"adapter": m, "input": {"text": "goal match team"}} for m in model_ids]
    response = httpx.post(
        f"{live.base_url}/predictions",
        json={"items": items},
        headers={"Authorization": f"Bearer {live.key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [p["label"] for p in response.json()["data"]]


class TestFineTunedModels:
    def test_ids_checkpoints_results_models_and_continuation(self, live: Live, tmp_path: Path) -> None:
        with news_csv(tmp_path / "news.csv").open("rb") as handle:
            file = live.client.files.create(file=handle, purpose="fine-tune")
        method = {"type": "grft", "grft": {"hyperparameters": SMALL}}
        created = live.client.fine_tuning.jobs.create(
            model="tiny-bert",
            training_file=file.id,
            suffix="news",
            seed=0,
            method=method,  # type: ignore[arg-type]
        )

        train(live, created.id)

        job = live.client.fine_tuning.jobs.retrieve(created.id)
        short = job.id.removeprefix("ftjob-")
        assert job.status == "succeeded"
        assert job.fine_tuned_model == f"ft:tiny-bert:{live.tenant_id}:news:{short}"
        assert job.trained_tokens is not None
        assert job.trained_tokens > 0
        # The results CSV, downloadable like any file.
        assert len(job.result_files) == 1
        results = live.client.files.content(job.result_files[0]).read().decode()
        assert (
            results.splitlines()[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
        )
        assert live.client.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"
        # Checkpoints: OpenAI's ids, and typed metrics under OpenAI's names.
        checkpoints = live.client.fine_tuning.jobs.checkpoints.list(job.id).data
        last = checkpoints[0]
        assert last.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{last.step_number}"
        assert last.metrics.train_loss is not None
        assert last.metrics.valid_loss is not None
        assert last.metrics.full_valid_loss == last.metrics.valid_loss
        assert last.metrics.valid_mean_token_accuracy is not None
        assert 0 <= last.metrics.valid_mean_token_accuracy <= 1
        # Events stay within OpenAI's types.
        events = live.client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert {e.type for e in events} <= {"message", "metrics"}
        assert any((e.data or {}).get("kind") == "checkpoint" for e in events)  # type: ignore[union-attr]

        # /v1/models: the base models and this organization's fine-tuned model.
        listed = {m.id: m for m in live.client.models.list()}
        assert "tiny-bert" in listed
        assert listed[job.fine_tuned_model].owned_by == live.tenant_id
        assert live.client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model

        # Served by any of its names: the model id, the adapter id, a checkpoint id in both forms.
        adapter_id = job.to_dict()["adapter_id"]
        step = last.step_number
        names = [
            job.fine_tuned_model,
            adapter_id,
            last.fine_tuned_model_checkpoint,
            f"{job.id}:ckpt-step-{step}",
        ]
        labels = predict(live, names)
        assert set(labels) <= {"sport", "business", "arts"}
        assert labels[0] == labels[1]
        assert labels[2] == labels[3]
        # A checkpoint downloads as an adapter made from its state.
        made = adapter_folder(live, last.fine_tuned_model_checkpoint, tmp_path / "ckpt")
        ckpt_adapter = load_adapter(made)
        assert ckpt_adapter.config["checkpoint"] == {"job_id": job.id, "step": step}
        assert ckpt_adapter.config["labels"] == ["arts", "business", "sport"]

        # A new job continues from the checkpoint: its base, the checkpoint's rows.
        continued = live.client.fine_tuning.jobs.create(
            model=last.fine_tuned_model_checkpoint,
            training_file=file.id,
            suffix="more",
            method=method,  # type: ignore[arg-type]
        )
        assert continued.model == last.fine_tuned_model_checkpoint
        train(live, continued.id)
        second = live.client.fine_tuning.jobs.retrieve(continued.id)
        assert second.status == "succeeded"
        assert second.fine_tuned_model is not None
        assert second.fine_tuned_model.startswith(f"ft:tiny-bert:{live.tenant_id}:more:")
        child = load_adapter(adapter_folder(live, second.fine_tuned_model, tmp_path / "child"))
        assert child.config["init_from"]["model"] == last.fine_tuned_model_checkpoint
        assert child.modules == ckpt_adapter.modules
        for module in child.modules:
            name = f"{module}.grft_indices"
            assert torch.equal(child.tensors[name], ckpt_adapter.tensors[name])

        # Deleting a fine-tuned model deletes its adapter; base models cannot be deleted.
        deleted = live.client.models.delete(job.fine_tuned_model)
        assert (deleted.id, deleted.deleted) == (job.fine_tuned_model, True)
        with pytest.raises(openai.NotFoundError):
            live.client.models.retrieve(job.fine_tuned_model)
        with pytest.raises(openai.PermissionDeniedError) as base:
            live.client.models.delete("tiny-bert")
        assert base.value.type == "permission_error"
        assert live.client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == job.fine_tuned_model
