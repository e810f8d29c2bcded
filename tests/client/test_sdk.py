"""The SDK against the real app: files, jobs, errors, pagination; a real job followed to its end
through Server-Sent Events, then its checkpoints, metrics, adapter downloads and predictions; the async
client gives the same answers."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import uuid

import pytest

import grft_client
from grft_client import AsyncClient, Client
from tests.client.conftest import HYPERPARAMETERS, LABELS, Server


@pytest.fixture
def client(server: Server):
    with Client(server.url, server.key, max_retries=0) as c:
        yield c


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


class TestFiles:
    def test_upload_get_list_content_download_delete(self, client: Client, server: Server, tmp_path) -> None:
        csv_bytes = server.csv.read_bytes()
        by_path = client.files.upload(server.csv)
        by_bytes = client.files.upload(csv_bytes, filename="b.csv")
        with server.csv.open("rb") as handle:
            by_handle = client.files.upload(handle)

        assert isinstance(by_path, grft_client.FileObject)
        assert (by_path.filename, by_path.bytes, by_path.purpose) == (
            "train.csv",
            len(csv_bytes),
            "fine-tune",
        )
        assert (by_bytes.filename, by_handle.filename) == ("b.csv", "train.csv")
        assert client.files.get(by_path.id) == by_path
        assert client.files.content(by_bytes.id) == csv_bytes
        assert client.files.download(by_handle.id, tmp_path / "d.csv") == len(csv_bytes)
        assert (tmp_path / "d.csv").read_bytes() == csv_bytes

        page = client.files.list(limit=2)
        assert [f.id for f in page.data] == [by_handle.id, by_bytes.id]  # newest first
        assert page.has_more is True
        assert page.last_id == by_bytes.id
        # The iterator follows the cursors: one request per file here.
        walked = [f.id for f in client.files.iter(limit=1)]
        assert walked[:3] == [by_handle.id, by_bytes.id, by_path.id]

        deleted = client.files.delete(by_path.id)
        assert (deleted.id, deleted.deleted) == (by_path.id, True)
        with pytest.raises(grft_client.NotFoundError) as missing:
            client.files.get(by_path.id)
        assert missing.value.status == 404
        assert missing.value.code == "not_found"

    def test_a_failed_download_leaves_no_file(self, client: Client, tmp_path) -> None:
        with pytest.raises(grft_client.NotFoundError):
            client.files.download("file-missing", tmp_path / "x.csv")
        assert list(tmp_path.iterdir()) == []


class TestErrors:
    def test_codes_params_and_messages_come_from_the_error_body(self, client: Client, server: Server) -> None:
        file = client.files.upload(server.csv)
        with pytest.raises(grft_client.NotFoundError) as unknown:
            client.jobs.create("no-such-model", file.id)
        refused = (grft_client.BadRequestError, grft_client.UnprocessableEntityError)
        with pytest.raises(refused) as bad_k:
            client.jobs.create("tiny-bert", file.id, hyperparameters={"k": 0})

        assert (unknown.value.status, unknown.value.code, unknown.value.param) == (
            404,
            "model_not_found",
            "model",
        )
        assert "no-such-model" in unknown.value.message
        assert bad_k.value.code == "invalid_request"
        assert bad_k.value.param == "method.grft.hyperparameters.k"
        assert f"{bad_k.value.status} invalid_request" in str(bad_k.value)

    def test_bad_key_and_other_tenant(self, server: Server, client: Client) -> None:
        file = client.files.upload(server.csv)
        with Client(server.url, "grft-not-a-key", max_retries=0) as stranger:
            with pytest.raises(grft_client.AuthenticationError) as denied:
                stranger.files.list()
        assert denied.value.status == 401
        with Client(server.url, server.other_key) as other, pytest.raises(grft_client.NotFoundError):
            other.files.get(file.id)  # another tenant's object answers 404

    def test_generation_routes_answer_through_the_sdk(self, client: Client) -> None:
        messages = [{"role": "user", "content": "hi"}]
        with pytest.raises(grft_client.NotFoundError) as unknown:
            client.chat.completions.create("no-such-model", messages, max_tokens=2)
        with pytest.raises(grft_client.NotFoundError):
            list(client.completions.stream("no-such-model", "once upon", max_tokens=2))
        assert unknown.value.param == "model"

    def test_unreachable_server_is_a_connection_error(self, unused_port: int) -> None:
        with Client(f"http://127.0.0.1:{unused_port}", "k", max_retries=0) as dead:
            assert dead.ready() is False
            with pytest.raises(grft_client.APIConnectionError):
                dead.models.list()


class TestJobs:
    def test_create_is_idempotent_list_filters_cancel_conflicts(self, client: Client, server: Server) -> None:
        file = client.files.upload(server.csv)
        tag = uuid.uuid4().hex[:8]
        first = client.jobs.create(
            "tiny-bert", file.id, hyperparameters={"k": 2}, metadata={"run": tag}, idempotency_key=tag
        )
        again = client.jobs.create(
            "tiny-bert", file.id, hyperparameters={"k": 2}, metadata={"run": tag}, idempotency_key=tag
        )
        assert again.id == first.id
        assert first.method["grft"]["hyperparameters"]["k"] == 2
        assert [j.id for j in client.jobs.list(metadata={"run": tag}).data] == [first.id]
        assert client.jobs.get(first.id).model == "tiny-bert"

        cancelled = client.jobs.cancel(first.id)
        assert cancelled.status in ("cancelled", "cancelling")
        final = client.jobs.wait(first.id, poll_interval=0.2, timeout=120)
        assert final.status == "cancelled"
        with pytest.raises(grft_client.ConflictError) as conflict:
            client.jobs.cancel(first.id)
        assert conflict.value.status == 409
        messages = [e.message for e in client.jobs.events(first.id).data]
        assert messages[-1] == f"Created fine-tuning job: {first.id}"  # newest first


@pytest.fixture(scope="module")
def trained(server: Server, worker) -> dict:
    """A real job, run by the real worker, followed with the SDK to its end."""
    with Client(server.url, server.key) as client:
        file = client.files.upload(server.csv)
        job = client.jobs.create("tiny-bert", file.id, hyperparameters=HYPERPARAMETERS, seed=0)
        events = list(client.jobs.follow(job.id))
        return {"job": client.jobs.get(job.id), "events": events, "file": file}


class TestRealJob:
    def test_follow_streams_every_event_to_the_end(self, trained: dict, client: Client) -> None:
        job, events = trained["job"], trained["events"]
        assert job.status == "succeeded", job.error
        assert job.finished
        assert job.adapter_id is not None
        messages = [e.message for e in events]
        assert messages[0] == f"Created fine-tuning job: {job.id}"
        assert messages[-1] == "The job has successfully completed"
        seen = [(e.type, e.message) for e in events]
        assert "metrics" in {e.type for e in events}, seen
        assert any(m.startswith("Step ") for m in messages), seen
        assert [e.id for e in events] == [
            e.id for e in reversed(list(client.jobs.events(job.id, limit=100).data))
        ]
        # Resuming after an event gives exactly the rest.
        rest = list(client.jobs.follow(job.id, after=events[2].id))
        assert [e.id for e in rest] == [e.id for e in events[3:]]

    def test_checkpoints_metrics_models(self, trained: dict, client: Client) -> None:
        job = trained["job"]
        checkpoints = client.jobs.checkpoints(job.id).data
        assert checkpoints
        assert all(c.fine_tuning_job_id == job.id for c in checkpoints)
        assert all(c.step_number > 0 and c.step_number % 4 == 0 for c in checkpoints)  # checkpoint_every=4
        metrics = client.jobs.metrics(job.id)
        assert isinstance(metrics, grft_client.JobMetrics)
        assert [p.step for p in metrics.steps] == list(range(1, len(metrics.steps) + 1))
        assert all(p.train_loss is not None for p in metrics.steps)
        assert [e.epoch for e in metrics.epochs] == [1, 2]  # n_epochs=2
        assert "tiny-bert" in {m.id for m in client.models.list()}
        assert client.models.get("tiny-bert").modality == "text"

    def test_adapter_download_export_predict(self, trained: dict, client: Client, tmp_path) -> None:
        adapter = client.adapters.get(trained["job"].adapter_id)
        assert (adapter.base_model, adapter.job_id) == ("tiny-bert", trained["job"].id)
        assert sorted(adapter.labels) == sorted(LABELS)
        assert adapter.id in [a.id for a in client.adapters.iter(limit=1)]

        native = tmp_path / "a.tar"
        assert client.adapters.download(adapter.id, native) == native.stat().st_size
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(tar_names(native.read_bytes()))
        buffer = io.BytesIO()
        client.adapters.export_peft(adapter.id, buffer)
        with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
            config = next(m for m in tar.getmembers() if m.name.endswith("adapter_config.json"))
            peft = json.load(tar.extractfile(config))  # type: ignore[arg-type]
        assert peft["peft_type"] == "LORA"

        answers = client.adapters.predict(adapter.id, texts=["goal match team", "market shares profit"])
        assert len(answers) == 2
        assert all(a.label in LABELS for a in answers)
        assert all(0 <= a.score <= 1 and a.top_k[0].label == a.label for a in answers)
        batched = client.predictions.create([(adapter.id, {"text": "goal match team"})])
        assert batched[0].label == answers[0].label
        with pytest.raises(grft_client.APIStatusError) as wrong_kind:
            client.adapters.predict(adapter.id, images=[b"\x89PNG not really"])
        assert wrong_kind.value.status in (400, 422)
        assert wrong_kind.value.param == "inputs[0].image"

    def test_async_client_gives_the_same_answers(self, trained: dict, client: Client, server: Server) -> None:
        job = trained["job"]

        async def run() -> dict:
            async with AsyncClient(server.url, server.key) as aclient:
                events = [e async for e in aclient.jobs.follow(job.id)]
                walked = [j.id async for j in aclient.jobs.iter(limit=1)]
                buffer = io.BytesIO()
                await aclient.adapters.download(job.adapter_id, buffer)
                with pytest.raises(grft_client.NotFoundError):
                    await aclient.jobs.get("ftjob-missing")
                return {
                    "job": await aclient.jobs.get(job.id),
                    "events": events,
                    "walked": walked,
                    "tar": buffer.getvalue(),
                    "predict": await aclient.adapters.predict(job.adapter_id, texts=["film actor music"]),
                    "models": await aclient.models.list(),
                    "files": (await aclient.files.get(trained["file"].id)),
                    "metrics": await aclient.jobs.metrics(job.id),
                }

        got = asyncio.run(run())
        assert got["job"] == client.jobs.get(job.id)
        assert [e.id for e in got["events"]] == [e.id for e in trained["events"]]
        assert got["walked"] == [j.id for j in client.jobs.iter(limit=100)]
        assert tar_names(got["tar"]) == tar_names(_download(client, job.adapter_id))
        assert got["predict"] == client.adapters.predict(job.adapter_id, texts=["film actor music"])
        assert got["models"] == client.models.list()
        assert got["files"] == trained["file"]
        assert got["metrics"] == client.jobs.metrics(job.id)


def _download(client: Client, adapter_id: str) -> bytes:
    buffer = io.BytesIO()
    client.adapters.download(adapter_id, buffer)
    return buffer.getvalue()
