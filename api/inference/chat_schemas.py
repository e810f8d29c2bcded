"""``/v1/chat/completions`` and ``/v1/completions``: OpenAI's request, response and stream-chunk shapes.

Requests take OpenAI's fields that a single-choice sampler can honour (``max_tokens`` or
``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``n``, ``stream``,
``stream_options``, ``user``); anything else is refused by name. Every field is bounded: messages,
their text, stop strings, token counts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The longest ``model``: a fine-tuned model's checkpoint id (``ft:<base>:<org>:<suffix>:<id>:ckpt-step-N``).
MAX_MODEL_ID = 320
#: Upper bounds that hold whatever the deployment: the model's context limits tokens further.
MAX_TOKENS_CEILING = 8192
MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 200_000
MAX_STOP = 4
MAX_STOP_CHARS = 256

_Text = Annotated[str, Field(max_length=MAX_CONTENT_CHARS)]
_StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = _StopText | Annotated[list[_StopText], Field(max_length=MAX_STOP)] | None
FinishReason = Literal["stop", "length"]


class TextPart(BaseModel):
    """A text part of a message's content (the only part type served)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str = Field(max_length=MAX_CONTENT_CHARS)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: _Text | Annotated[list[TextPart], Field(max_length=64)]
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1, max_length=MAX_MODEL_ID, description="A base model or a fine-tuned model id."
    )
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: Stop = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int | None = Field(default=None, description="Only 1 is served.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)

    def stop_strings(self) -> tuple[str, ...]:
        """``stop`` as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    logprobs: bool | None = Field(default=None, description="Only false is served.")


class CompletionRequest(_Sampling):
    prompt: _Text | Annotated[list[_Text], Field(min_length=1, max_length=1)] = Field(
        description="One prompt (or a list of one)."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class TextCompletion(BaseModel):
    """A completion, and each chunk of a streamed one (OpenAI uses the same object for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
