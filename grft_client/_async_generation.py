"""The async client's text generation: ``client.chat.completions`` and ``client.completions``, awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from grft_client import _ops as ops
from grft_client._base import stream_item
from grft_client.types import ChatCompletion, ChatCompletionChunk, TextCompletion

if TYPE_CHECKING:
    from grft_client._async_client import AsyncClient


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


class ChatCompletions(_Resource):
    async def create(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> ChatCompletion:
        """The reply of a causal language model (a base or a fine-tuned model id) to ``messages``
        (``[{"role": "user", "content": "..."}]``)."""
        params = ops.sampling(max_tokens, temperature, top_p, stop, seed)
        return await self._client.call(ops.chat_completion(ops.chat_body(model, messages, params)))

    async def stream(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[ChatCompletionChunk]:
        """The reply as it is generated, chunk by chunk (``chunk.text``)."""
        body = ops.chat_body(model, messages, ops.sampling(max_tokens, temperature, top_p, stop, seed))
        async for data in self._client.sse_post("/v1/chat/completions", body):
            yield stream_item(data, ChatCompletionChunk)


class Chat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = ChatCompletions(client)


class Completions(_Resource):
    async def create(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> TextCompletion:
        """The continuation of ``prompt`` (no chat template)."""
        params = ops.sampling(max_tokens, temperature, top_p, stop, seed)
        return await self._client.call(ops.text_completion({"model": model, "prompt": prompt, **params}))

    async def stream(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[TextCompletion]:
        body = {"model": model, "prompt": prompt, **ops.sampling(max_tokens, temperature, top_p, stop, seed)}
        async for data in self._client.sse_post("/v1/completions", body):
            yield stream_item(data, TextCompletion)
