"""``POST /v1/chat/completions`` and ``POST /v1/completions``: OpenAI's text generation on our models.

``model`` names a causal-LM base model (``smollm2-135m-instruct``) or a fine-tuned model of the caller's
organization (``ft:…``, its adapter id, a checkpoint's id), resolved as every inference route resolves
adapters; a classifier (base or fine-tuned) is a 400 naming ``model``. The caller's rate limit and
in-flight allowance apply as to predictions (one request = one unit of cost). Requests of one base share
its engine's decoding steps whatever their adapters (``grft_core.serving.generation``).

``stream: true`` answers with server-sent events: OpenAI's ``chat.completion.chunk`` (or
``text_completion``) objects, the last one with ``finish_reason``, one with ``usage`` when
``stream_options.include_usage`` is set, then ``data: [DONE]``. A client that goes away cancels its
request before the engine's next step.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.deps import InferenceDep, RateLimiterDep, SessionDep, SettingsDep
from api.errors import BadRequest, NotFound, RateLimited, Unauthorized, error_body, error_responses
from api.inference.chat_schemas import (
    MAX_TOKENS_CEILING,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkDelta,
    CompletionChoice,
    CompletionRequest,
    TextCompletion,
    Usage,
)
from api.inference.chat_service import is_causal_lm
from api.inference.limits import RateLimiter
from api.inference.routes import LimitedTenantDep, adapter_refs
from api.inference.service import RESULT_TIMEOUT_S, AdapterRef, InferenceService
from domain.auth.models import Tenant
from domain.settings import Settings
from grft_core.errors import ConfigError, GrftError, ModelNotFound
from grft_core.serving.generation import GenerationEngine
from grft_core.serving.generation_sampling import SamplingParams
from grft_core.serving.generation_stream import Completion, GenerationHandle

router = APIRouter(tags=["inference"])

#: OpenAI's default ``max_tokens`` of a completion; a chat reply may run to the model's context.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_ERRORS = error_responses(Unauthorized, NotFound, BadRequest, ModelNotFound, RateLimited)


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: a causal-LM base, and an adapter of it (or none)."""

    model: str
    base_model: str
    ref: AdapterRef | None


def resolve_model(session: Session, tenant: Tenant, inference: InferenceService, model: str) -> Target:
    """The base model and adapter ``model`` names for this tenant.

    Raises:
        ModelNotFound: neither a base model nor a fine-tuned model of the tenant (404).
        BadRequest: a classifier, base or fine-tuned (400, ``param="model"``).
    """
    ref = None
    try:
        spec = inference.registry.get(model)
    except ModelNotFound:
        try:
            ref = adapter_refs(session, tenant, inference.store, [model], ["model"], inference.registry)[0]
        except NotFound as exc:
            raise ModelNotFound(f"model: no base or fine-tuned model {model!r}", param="model") from exc
        spec = inference.registry.get(ref.base_model)
    session.commit()  # no pooled connection waits on generation
    if not is_causal_lm(spec):
        raise BadRequest(
            f"model: {model!r} is a classifier ({spec.name}); chat and completions need a language model "
            "(classifiers answer at POST /v1/adapters/{id}/predict and /v1/predictions)",
            param="model",
        )
    return Target(model, spec.name, ref)


def _sampling(
    body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, default: int
) -> SamplingParams:
    if body.n not in (None, 1):
        raise BadRequest(f"n: only n=1 is served, got {body.n}", param="n")
    return SamplingParams(
        max_tokens=max_tokens or default,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
    )


def _submit(
    stack: ExitStack,
    target: Target,
    inference: InferenceService,
    settings: Settings,
    tenant: Tenant,
    limiter: RateLimiter,
    prompt_of: Callable[[GenerationEngine], list[int]],
    params: SamplingParams,
    prompt_param: str,
) -> GenerationHandle:
    """Hold the adapter and the tenant's allowance on ``stack`` and queue the request."""
    fetch = inference.fetcher(target.ref) if target.ref is not None else None
    engine = stack.enter_context(
        inference.chat.held(target.base_model, None if target.ref is None else target.ref.id, fetch)
    )
    try:
        prompt = prompt_of(engine)
    except ConfigError as exc:
        raise BadRequest(f"{prompt_param}: {exc.message}", param=prompt_param) from exc
    limits = settings.inference_tenant_max_cost, settings.inference_tenant_max_requests
    stack.enter_context(limiter.admission.admitted(tenant.id, 1.0, *limits))
    adapter_id = None if target.ref is None else target.ref.id
    try:
        return engine.submit(prompt, adapter_id, params)
    except ConfigError as exc:  # a prompt longer than the model's context
        raise BadRequest(f"{prompt_param}: {exc.message}", param=prompt_param) from exc


def _usage(c: Completion) -> Usage:
    return Usage(
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        total_tokens=c.prompt_tokens + c.completion_tokens,
    )


def _sse(obj: BaseModel | dict[str, Any]) -> str:
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stream(
    handle: GenerationHandle,
    stack: ExitStack,
    first: list[BaseModel],
    piece: Callable[[str], BaseModel],
    last: Callable[[Completion], BaseModel],
    usage: Callable[[Completion], BaseModel] | None,
) -> Iterator[str]:
    """Server-sent events of one request; the request and what it holds end with the stream."""
    try:
        for event in first:
            yield _sse(event)
        for text in handle:
            yield _sse(piece(text))
        completion = handle.result()
        yield _sse(last(completion))
        if usage is not None:
            yield _sse(usage(completion))
        yield "data: [DONE]\n\n"
    except GrftError as exc:
        yield _sse(error_body(exc.code, exc.message, exc.param))
    except Exception:  # the status line is sent: an error event is the only way left to say it
        yield _sse(error_body("server_error", "generation failed"))
    finally:
        handle.cancel()
        stack.close()


def _respond(
    handle: GenerationHandle,
    stack: ExitStack,
    stream: bool,
    make: Callable[[Completion], BaseModel],
    events: Callable[[GenerationHandle, ExitStack], Iterator[str]],
) -> BaseModel | StreamingResponse:
    if stream:
        return StreamingResponse(
            events(handle, stack), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    with stack:
        try:
            return make(handle.result(timeout=RESULT_TIMEOUT_S))
        finally:
            handle.cancel()


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=_ERRORS
    | {200: {"model": ChatCompletion, "description": "a chat completion, or its SSE stream"}},
)
def chat_completions(
    body: ChatCompletionRequest,
    tenant: LimitedTenantDep,
    session: SessionDep,
    settings: SettingsDep,
    inference: InferenceDep,
    limiter: RateLimiterDep,
) -> BaseModel | StreamingResponse:
    """The assistant's reply to ``messages``, rendered with the model's chat template."""
    if body.logprobs:
        raise BadRequest("logprobs: log probabilities are not served", param="logprobs")
    params = _sampling(body, body.max_completion_tokens or body.max_tokens, MAX_TOKENS_CEILING)
    target = resolve_model(session, tenant, inference, body.model)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    stack = ExitStack()
    try:
        handle = _submit(
            stack,
            target,
            inference,
            settings,
            tenant,
            limiter,
            lambda e: e.chat_prompt(messages),
            params,
            "messages",
        )
    except BaseException:
        stack.close()
        raise
    cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())

    def chunk(delta: ChunkDelta, finish: Any = None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[choice])

    def usage_chunk(c: Completion) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[], usage=_usage(c))

    def events(h: GenerationHandle, s: ExitStack) -> Iterator[str]:
        include = body.stream_options is not None and body.stream_options.include_usage
        return _stream(
            h,
            s,
            [chunk(ChunkDelta(role="assistant", content=""))],
            lambda text: chunk(ChunkDelta(content=text)),
            lambda c: chunk(ChunkDelta(), c.finish_reason),
            usage_chunk if include else None,
        )

    def whole(c: Completion) -> ChatCompletion:
        choice = ChatChoice(message=AssistantMessage(content=c.text), finish_reason=c.finish_reason)
        return ChatCompletion(id=cid, created=created, model=body.model, choices=[choice], usage=_usage(c))

    return _respond(handle, stack, bool(body.stream), whole, events)


@router.post(
    "/v1/completions",
    response_model=None,
    responses=_ERRORS | {200: {"model": TextCompletion, "description": "a completion, or its SSE stream"}},
)
def completions(
    body: CompletionRequest,
    tenant: LimitedTenantDep,
    session: SessionDep,
    settings: SettingsDep,
    inference: InferenceDep,
    limiter: RateLimiterDep,
) -> BaseModel | StreamingResponse:
    """The continuation of ``prompt`` (no chat template)."""
    params = _sampling(body, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)
    target = resolve_model(session, tenant, inference, body.model)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    stack = ExitStack()
    try:
        handle = _submit(
            stack,
            target,
            inference,
            settings,
            tenant,
            limiter,
            lambda e: e.text_prompt(prompt),
            params,
            "prompt",
        )
    except BaseException:
        stack.close()
        raise
    cid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())

    def chunk(text: str, finish: Any = None, usage: Usage | None = None) -> TextCompletion:
        choices = [CompletionChoice(text=text, finish_reason=finish)] if usage is None else []
        return TextCompletion(id=cid, created=created, model=body.model, choices=choices, usage=usage)

    def events(h: GenerationHandle, s: ExitStack) -> Iterator[str]:
        include = body.stream_options is not None and body.stream_options.include_usage
        return _stream(
            h,
            s,
            [],
            chunk,
            lambda c: chunk("", c.finish_reason),
            (lambda c: chunk("", usage=_usage(c))) if include else None,
        )

    def whole(c: Completion) -> TextCompletion:
        choice = CompletionChoice(text=c.text, finish_reason=c.finish_reason)
        return TextCompletion(id=cid, created=created, model=body.model, choices=[choice], usage=_usage(c))

    return _respond(handle, stack, bool(body.stream), whole, events)
