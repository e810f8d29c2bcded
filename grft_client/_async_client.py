"""The asynchronous client: ``AsyncClient`` has the methods of ``Client``, awaited; its ``iter`` and
``follow`` are async iterators. Kept next to ``_client.py`` line for line: the requests themselves are
described once, in ``_ops``."""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx

from grft_client import _ops as ops
from grft_client._async_generation import Chat, Completions
from grft_client._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    Call,
    SSEDecoder,
    backoff_s,
    check,
    default_headers,
    job_event,
    parse_response,
    should_retry,
    transport_error,
)
from grft_client._config import resolve
from grft_client._errors import APIConnectionError, APIStatusError
from grft_client.types import (
    Adapter,
    APIObject,
    Checkpoint,
    Deleted,
    FileObject,
    Job,
    JobEvent,
    JobMetrics,
    Model,
    Page,
    Prediction,
)

T = TypeVar("T")
# Looked up at each call, so that a test can stand in for the backoff waits.
_sleep = asyncio.sleep
Item = TypeVar("Item", bound=APIObject)


class AsyncClient:
    """A client of one grft server. Unset arguments come from ``GRFT_API_URL`` / ``GRFT_API_KEY``,
    then the config file's ``profile`` (see ``grft_client.config_path()``)."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        profile: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        config = resolve(api_url, api_key, profile)
        self.api_url, self.api_key, self.profile = config.api_url, config.api_key, config.profile
        self.timeout, self.max_retries = timeout, max_retries
        self._http = http_client or httpx.AsyncClient(base_url=config.api_url, timeout=timeout)
        self._http.headers.update(default_headers(config.api_key))
        self.files = Files(self)
        self.jobs = Jobs(self)
        self.adapters = Adapters(self)
        self.predictions = Predictions(self)
        self.models = Models(self)
        self.chat = Chat(self)
        self.completions = Completions(self)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def ready(self) -> bool:
        """Whether the server answers ``/readyz`` with 200 (its database and broker answer); no retries."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def call(self, call: Call[T]) -> T:
        """Send ``call``, retrying as its ``retry`` allows; the typed answer or a typed error."""
        attempt = 0
        try:
            while True:
                try:
                    response = await self._http.request(
                        call.method,
                        call.path,
                        params=call.params,
                        json=call.json,
                        files=call.files,
                        data=call.data,
                        headers=call.headers,
                    )
                except httpx.TransportError as exc:
                    if call.retry and attempt < self.max_retries:
                        attempt += 1
                        await _sleep(backoff_s(attempt))
                        continue
                    raise transport_error(exc, getattr(exc, "_request", None)) from exc
                try:
                    return parse_response(call, response)
                except APIStatusError as error:
                    if call.retry and should_retry(error) and attempt < self.max_retries:
                        attempt += 1
                        await _sleep(backoff_s(attempt, error.retry_after))
                        continue
                    raise
        finally:
            if call.on_done is not None:
                call.on_done()

    async def pages(
        self, first: Callable[[str | None], Call[Page[Item]]], after: str | None = None
    ) -> AsyncIterator[Item]:
        """Every item of a cursor-paginated list, fetching a page as the previous one runs out."""
        while True:
            page = await self.call(first(after))
            for item in page.data:
                yield item
            if not page.has_more or not page.last_id:
                return
            after = page.last_id

    async def download(
        self, path: str, params: Mapping[str, str] | None, dest: str | Path | IO[bytes]
    ) -> int:
        """Stream an answer's bytes into ``dest`` (a path is written whole or not at all); the size."""
        if not isinstance(dest, str | Path):
            return await self._download_to(path, params, dest)
        target = Path(dest)
        partial = target.with_name(f".{target.name}.part")
        try:
            with partial.open("wb") as handle:
                size = await self._download_to(path, params, handle)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return size

    async def _download_to(self, path: str, params: Mapping[str, str] | None, out: IO[bytes]) -> int:
        size = 0
        try:
            async with self._http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    check(response, await response.aread())
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
                    size += len(chunk)
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return size

    async def sse_post(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[str]:
        """The data of each event of a streamed POST answer, until ``[DONE]`` (not retried)."""
        headers = {"Accept": "text/event-stream"}
        try:
            async with self._http.stream(
                "POST", path, json={**body, "stream": True}, headers=headers
            ) as response:
                if response.status_code >= 400:
                    check(response, await response.aread())
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
                    data = decoder.feed(line)
                    if data is not None:
                        yield data
                    if decoder.done:
                        return
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


class Files(_Resource):
    async def upload(
        self, file: ops.FileInput, *, purpose: str = "fine-tune", filename: str | None = None
    ) -> FileObject:
        """Upload a dataset (a path, bytes, or a binary file object)."""
        return await self._client.call(ops.upload_file(file, purpose, filename))

    async def list(
        self, *, after: str | None = None, limit: int | None = None, purpose: str | None = None
    ) -> Page[FileObject]:
        return await self._client.call(ops.list_files(after, limit, purpose))

    def iter(self, *, limit: int | None = None, purpose: str | None = None) -> AsyncIterator[FileObject]:
        """Every file, newest first, page by page (``limit`` per page)."""
        return self._client.pages(lambda after: ops.list_files(after, limit, purpose))

    async def get(self, file_id: str) -> FileObject:
        return await self._client.call(ops.get_file(file_id))

    async def content(self, file_id: str) -> bytes:
        return await self._client.call(ops.file_content(file_id))

    async def download(self, file_id: str, dest: str | Path | IO[bytes]) -> int:
        return await self._client.download(ops.file_content(file_id).path, None, dest)

    async def delete(self, file_id: str) -> Deleted:
        return await self._client.call(ops.delete_file(file_id))


class Jobs(_Resource):
    async def create(
        self,
        model: str,
        training_file: str,
        *,
        validation_file: str | None = None,
        method: str | Mapping[str, Any] = "grft",
        hyperparameters: Mapping[str, Any] | None = None,
        seed: int | None = None,
        suffix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Create a fine-tuning job; ``training_file`` is a file id or a dataset URI."""
        return await self._client.call(
            ops.create_job(
                model,
                training_file,
                validation_file=validation_file,
                method=method,
                hyperparameters=hyperparameters,
                seed=seed,
                suffix=suffix,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    async def list(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        status: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Page[Job]:
        return await self._client.call(ops.list_jobs(after, limit, status, metadata))

    def iter(
        self,
        *,
        limit: int | None = None,
        status: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Job]:
        """Every job, newest first, page by page (``limit`` per page)."""
        return self._client.pages(lambda after: ops.list_jobs(after, limit, status, metadata))

    async def get(self, job_id: str) -> Job:
        return await self._client.call(ops.get_job(job_id))

    async def cancel(self, job_id: str) -> Job:
        return await self._client.call(ops.cancel_job(job_id))

    async def delete(self, job_id: str) -> Deleted:
        """Delete a finished job with its events, checkpoints and adapter."""
        return await self._client.call(ops.delete_job(job_id))

    async def events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[JobEvent]:
        """A page of events, newest first."""
        return await self._client.call(ops.list_events(job_id, after, limit))

    async def checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[Checkpoint]:
        return await self._client.call(ops.list_checkpoints(job_id, after, limit))

    async def metrics(self, job_id: str) -> JobMetrics:
        return await self._client.call(ops.job_metrics(job_id))

    async def follow(self, job_id: str, *, after: str | None = None) -> AsyncIterator[JobEvent]:
        """The job's events as they happen, oldest first (after event ``after``), through Server-Sent
        Events; ends when the job has finished. A dropped stream is resumed where it stopped."""
        client, failures = self._client, 0
        while True:
            path, params = ops.event_stream(job_id, after)
            decoder = SSEDecoder()
            try:
                async with client._http.stream(
                    "GET", path, params=params, headers={"Accept": "text/event-stream"}
                ) as response:
                    if response.status_code >= 400:
                        check(response, await response.aread())
                    async for line in response.aiter_lines():
                        data = decoder.feed(line)
                        if data is not None:
                            event = job_event(data)
                            after, failures = decoder.last_id or event.id, 0
                            yield event
                        if decoder.done:
                            return
                error: APIConnectionError = APIConnectionError("the event stream ended before the job did")
            except httpx.TransportError as exc:
                error = transport_error(exc)
            failures += 1
            if failures > client.max_retries:
                raise error
            await _sleep(backoff_s(failures))

    async def wait(self, job_id: str, *, poll_interval: float = 2.0, timeout: float | None = None) -> Job:
        """Poll until the job has finished; returns it (raises ``TimeoutError`` after ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (job := await self.get(job_id)).finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout}s")
            await _sleep(poll_interval)
        return job


class Adapters(_Resource):
    async def list(self, *, after: str | None = None, limit: int | None = None) -> Page[Adapter]:
        return await self._client.call(ops.list_adapters(after, limit))

    def iter(self, *, limit: int | None = None) -> AsyncIterator[Adapter]:
        return self._client.pages(lambda after: ops.list_adapters(after, limit))

    async def get(self, adapter_id: str) -> Adapter:
        return await self._client.call(ops.get_adapter(adapter_id))

    async def delete(self, adapter_id: str) -> Deleted:
        return await self._client.call(ops.delete_adapter(adapter_id))

    async def download(self, adapter_id: str, dest: str | Path | IO[bytes], *, format: str = "grft") -> int:
        """Write the adapter as a tar into ``dest``: ``grft`` as trained (native), ``peft_lora`` its exact
        PEFT LoRA export. Returns the bytes written."""
        path, params = ops.adapter_content(adapter_id, format)
        return await self._client.download(path, params, dest)

    async def export_peft(self, adapter_id: str, dest: str | Path | IO[bytes]) -> int:
        """The adapter's exact PEFT LoRA export, as a tar, into ``dest``."""
        return await self.download(adapter_id, dest, format="peft_lora")

    async def predict(
        self, adapter_id: str, *, images: Iterable[ops.ImageInput] = (), texts: Iterable[str] = ()
    ) -> builtins.list[Prediction]:
        """Predictions of the base model with this adapter: images (paths, bytes or base64), then texts."""
        return await self._client.call(ops.predict(adapter_id, images, texts))


class Predictions(_Resource):
    async def create(self, items: Sequence[tuple[str, Mapping[str, str]]]) -> list[Prediction]:
        """Items ``(adapter_id, {"image": base64} | {"text": str})``, answered in order (see
        ``grft_client.image_input``)."""
        return await self._client.call(ops.predictions(items))


class Models(_Resource):
    async def list(self) -> builtins.list[Model]:
        """The server's base models."""
        return await self._client.call(ops.list_models())

    async def get(self, model_id: str) -> Model:
        return await self._client.call(ops.get_model(model_id))
