"""The SDK's own rules, where the real server cannot be made to misbehave on cue: which calls are
retried after a 429/503 or a dropped connection (a scripted transport plays the server), the config
file and its precedence, and the Server-Sent-Events decoder."""

from __future__ import annotations

import asyncio
import json
import stat

import httpx
import pytest

import grft_client
from grft_client import AsyncClient, Client, resolve, save_profile
from grft_client._base import SSEDecoder, backoff_s

JOB = {
    "id": "ftjob-1", "created_at": 1, "model": "m", "status": "queued", "training_file": "file-1",
    "progress": {"steps_completed": 0, "total_steps": None, "seconds_remaining": None},
}  # fmt: skip


def error(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": f"said {code}", "param": None, "type": code}}
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """Answers requests in turn from a list (an exception in it is raised as the transport's)."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers, self.requests = list(answers), []  # type: ignore[var-annotated]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr("grft_client._client._sleep", waited.append)

    async def no_wait(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr("grft_client._async_client._sleep", no_wait)
    return waited


def client_for(script: Script, retries: int = 2) -> Client:
    http = httpx.Client(base_url="http://grft.test", transport=httpx.MockTransport(script))
    return Client("http://grft.test", "k", max_retries=retries, http_client=http)


class TestRetries:
    def test_reads_are_retried_after_503_429_and_dropped_connections(self, sleeps: list[float]) -> None:
        script = Script(
            error(503, "unavailable"),
            httpx.ConnectError("refused"),
            httpx.Response(200, json=JOB),
        )
        assert client_for(script).jobs.get("ftjob-1").id == "ftjob-1"
        assert len(script.requests) == 3
        assert len(sleeps) == 2

    def test_retry_after_is_honoured(self, sleeps: list[float]) -> None:
        script = Script(error(429, "rate_limited", **{"Retry-After": "3"}), httpx.Response(200, json=JOB))
        client_for(script).jobs.get("ftjob-1")
        assert sleeps == [3.0]

    def test_gives_up_after_max_retries_with_the_last_error(self, sleeps: list[float]) -> None:
        script = Script(*(error(503, "unavailable") for _ in range(3)))
        with pytest.raises(grft_client.InternalServerError) as failed:
            client_for(script).files.list()
        assert (failed.value.status, failed.value.code, failed.value.message) == (
            503,
            "unavailable",
            "said unavailable",
        )
        assert len(script.requests) == 3

    def test_standing_quota_and_non_idempotent_calls_are_not_retried(self, sleeps: list[float]) -> None:
        quota = Script(error(429, "quota_exceeded"))
        with pytest.raises(grft_client.RateLimitError):
            client_for(quota).jobs.create("m", "file-1")
        cancel = Script(error(503, "unavailable"))
        with pytest.raises(grft_client.InternalServerError):
            client_for(cancel).jobs.cancel("ftjob-1")
        upload = Script(httpx.ConnectError("refused"))
        with pytest.raises(grft_client.APIConnectionError):
            client_for(upload).files.upload(b"text,label\n")
        assert (len(quota.requests), len(cancel.requests), len(upload.requests)) == (1, 1, 1)
        assert sleeps == []

    def test_job_creation_is_retried_with_one_idempotency_key(self, sleeps: list[float]) -> None:
        script = Script(httpx.ReadError("reset"), httpx.Response(200, json=JOB))
        client_for(script).jobs.create("m", "file-1", hyperparameters={"k": 4})
        keys = {r.headers["Idempotency-Key"] for r in script.requests}
        assert len(script.requests) == 2
        assert len(keys) == 1
        body = json.loads(script.requests[0].content)
        assert body["method"] == {"type": "grft", "grft": {"hyperparameters": {"k": 4}}}

    def test_async_client_retries_alike(self, sleeps: list[float]) -> None:
        script = Script(error(503, "unavailable"), httpx.Response(200, json=JOB))

        async def run() -> str:
            http = httpx.AsyncClient(base_url="http://grft.test", transport=httpx.MockTransport(script))
            async with AsyncClient("http://grft.test", "k", http_client=http) as client:
                return (await client.jobs.get("ftjob-1")).id

        assert asyncio.run(run()) == "ftjob-1"
        assert len(sleeps) == 1

    def test_ids_are_escaped_into_one_path_segment(self, sleeps: list[float]) -> None:
        script = Script(error(404, "not_found"))
        with pytest.raises(grft_client.NotFoundError):
            client_for(script).files.get("../jobs?x=1")
        assert script.requests[0].url.raw_path == b"/v1/files/..%2Fjobs%3Fx%3D1"

    def test_backoff_grows_and_is_capped(self) -> None:
        assert all(0.25 <= backoff_s(1) <= 0.5 for _ in range(20))
        assert all(1.0 <= backoff_s(3) <= 2.0 for _ in range(20))
        assert backoff_s(30) <= 30.0
        assert backoff_s(1, retry_after=120) == 30.0


class TestConfig:
    @pytest.fixture(autouse=True)
    def _isolated(self, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
        for var in ("GRFT_API_URL", "GRFT_API_KEY", "GRFT_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("GRFT_CONFIG", str(tmp_path / "conf" / "config.toml"))

    def test_saved_profiles_are_private_and_kept_side_by_side(self, tmp_path) -> None:
        path = save_profile("default", "http://a.example:8000/v1/", "key-a")
        save_profile("staging", "https://b.example", None)
        assert path == tmp_path / "conf" / "config.toml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert resolve() == grft_client.ClientConfig("http://a.example:8000", "key-a", "default", str(path))
        staging = resolve(profile="staging")
        assert (staging.api_url, staging.api_key) == ("https://b.example", None)
        save_profile("default", "http://a.example:9000", 'quote"and\\slash')
        assert resolve().api_key == 'quote"and\\slash'
        assert resolve(profile="staging").api_url == "https://b.example"

    def test_arguments_beat_environment_beat_file(self, monkeypatch: pytest.MonkeyPatch) -> None:
        save_profile("default", "http://file.example", "file-key")
        monkeypatch.setenv("GRFT_API_URL", "http://env.example")
        assert (resolve().api_url, resolve().api_key) == ("http://env.example", "file-key")
        assert resolve(api_url="http://arg.example").api_url == "http://arg.example"
        monkeypatch.setenv("GRFT_API_KEY", "env-key")
        assert resolve().api_key == "env-key"
        assert resolve().source == "environment"

    def test_refusals_name_the_problem(self, tmp_path) -> None:
        with pytest.raises(grft_client.ConfigurationError, match="no API URL"):
            resolve()
        with pytest.raises(grft_client.ConfigurationError, match="no profile 'prod'"):
            resolve(profile="prod")
        with pytest.raises(grft_client.ConfigurationError, match="http:// or https://"):
            resolve(api_url="ftp://x")
        with pytest.raises(grft_client.ConfigurationError, match="profile names"):
            save_profile("a b", "http://x", None)
        (tmp_path / "conf").mkdir()
        (tmp_path / "conf" / "config.toml").write_text("[default\n")
        with pytest.raises(grft_client.ConfigurationError, match="cannot read the config file"):
            resolve()


class TestSSE:
    def test_events_comments_multiline_and_done(self) -> None:
        decoder = SSEDecoder()
        event = {"id": "ftevent-1", "created_at": 1, "level": "info", "message": "hi", "type": "message"}
        text = json.dumps(event)
        cut = text.index(",") + 1  # between two JSON members, where a newline is whitespace
        lines = [
            ": ping",
            "id: ftevent-1",
            f"data: {text[:cut]}",
            f"data:{text[cut:]}",
            "",
            "data: [DONE]",
            "",
        ]
        got = [d for d in (decoder.feed(line) for line in lines) if d is not None]
        # Two data lines join with a newline, which JSON reads as whitespace.
        assert [json.loads(d)["message"] for d in got] == ["hi"]
        assert (decoder.last_id, decoder.done) == ("ftevent-1", True)


class TestMetricsShapes:
    def test_the_older_one_list_per_series_shape_reads_into_steps_and_epochs(self) -> None:
        old = {
            "train_loss": [{"step": 1, "value": 0.9}, {"step": 2, "value": 0.7}],
            "lr": [{"step": 1, "value": 0.01}, {"step": 2, "value": 0.005}],
            "val_accuracy": [{"epoch": 1, "value": 0.5}, {"epoch": 2, "value": 0.75}],
        }
        metrics = grft_client.JobMetrics.parse(old)
        assert [(p.step, p.train_loss, p.lr) for p in metrics.steps] == [(1, 0.9, 0.01), (2, 0.7, 0.005)]
        assert [(e.epoch, e.valid_accuracy) for e in metrics.epochs] == [(1, 0.5), (2, 0.75)]
        new = {"object": "fine_tuning.job.metrics", "steps": [{"step": 1, "train_loss": 0.9}], "epochs": []}
        assert grft_client.JobMetrics.parse(new).steps[0].train_loss == 0.9


def sse(*events: dict) -> httpx.Response:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})


class TestGeneration:
    CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "lm"}

    def test_a_streamed_reply_arrives_chunk_by_chunk(self) -> None:
        script = Script(
            sse(
                {**self.CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                {**self.CHUNK, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
                {
                    **self.CHUNK,
                    "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
                },
            )
        )
        messages = [{"role": "user", "content": "hi"}]
        chunks = list(client_for(script).chat.completions.stream("lm", messages, max_tokens=4, stop=["\n"]))
        assert "".join(c.text for c in chunks) == "Hello"
        assert chunks[-1].choices[0].finish_reason == "stop"
        sent = json.loads(script.requests[0].content)
        assert sent == {"model": "lm", "messages": messages, "max_tokens": 4, "stop": ["\n"], "stream": True}

    def test_an_error_in_the_stream_raises(self) -> None:
        failed = {"error": {"code": "server_error", "message": "generation failed", "param": None}}
        script = Script(sse({"id": "cmpl-1", "model": "lm", "choices": [{"text": "a"}]}, failed))
        stream = client_for(script).completions.stream("lm", "once upon")
        assert next(stream).text == "a"
        with pytest.raises(grft_client.InternalServerError, match="generation failed"):
            next(stream)

    def test_a_whole_reply(self) -> None:
        reply = {
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "lm",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }  # fmt: skip
        script = Script(httpx.Response(200, json=reply))
        answer = client_for(script).chat.completions.create("lm", [{"role": "user", "content": "hi"}])
        assert (answer.text, answer.usage.total_tokens if answer.usage else None) == ("Hi!", 5)
        assert json.loads(script.requests[0].content)["stream"] is False
