"""Text generation with many GRFT adapters of one causal LM in every decoding step.

``GenerationEngine`` owns a Hugging Face causal LM whose adapted linear layers are replaced by
``MultiAdapterLayer`` (``grft_core.serving.layer``): each adapter has a slot, and a forward adds every
batch item's own k rows, so requests for different adapters of one base (and for the base itself, slot
0) share each forward. One thread owns the model and runs continuous batching:

1. requests waiting are admitted up to ``max_batch`` running: their prompts are prefilled together
   (one left-padded forward, each row under its adapter), their first tokens sampled, and their
   key/value caches joined to the running batch (``grft_core.serving.generation_kv``);
2. one decoding step runs every running request together: one new token each, each under its adapter;
3. finished requests (end-of-sequence token, stop string, ``max_tokens``, context full, cancelled)
   leave the batch; the rest continue untouched.

Sampling is per request (``grft_core.serving.generation_sampling``): its own seeded generator, so its
tokens do not depend on what else runs. Callers ``submit`` token ids and read text deltas and the
completion from a ``GenerationHandle`` (``grft_core.serving.generation_stream``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jinja2 import TemplateError
from torch import Tensor, nn
from transformers import DynamicCache

from grft_core.adapters.format import GRFT_KINDS, Adapter
from grft_core.errors import AdapterError, ConfigError, FingerprintMismatch, GrftError
from grft_core.method.layers import Axis
from grft_core.serving.generation_kv import BatchKV, check_full_attention
from grft_core.serving.generation_sampling import Sampler, SamplingParams, TextAssembler
from grft_core.serving.generation_stream import Completion, GenerationCancelled, GenerationHandle
from grft_core.serving.layer import BatchSlots, MultiAdapterLayer

log = logging.getLogger(__name__)


class EngineBusy(GrftError):
    """The engine's queue of waiting requests is full: retry later."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ServedLMAdapter:
    """A loaded adapter of a generation engine.

    Attributes:
        id: the caller's name for it.
        base_model: the base it was trained on (from its config).
        slot: its slot in every bank (>= 1).
        axis: rows or columns.
        modules: the modules it changes.
        nbytes: bytes its tensors take on the engine's device.
    """

    id: str
    base_model: str
    slot: int
    axis: Axis
    modules: tuple[str, ...]
    nbytes: int


@dataclass
class _Request:
    handle: GenerationHandle
    prompt: list[int]
    slot: int
    axis: Axis | None
    sampler: Sampler
    text: TextAssembler
    max_tokens: int
    next_token: int = -1
    done: bool = False


class GenerationEngine:
    """A causal LM, the slots of its adapters, and the thread that generates for every request.

    Args:
        model: a transformers causal LM (``logits`` output, ``past_key_values``); taken over: frozen,
            eval mode, adapted layers replaced.
        tokenizer: its tokenizer (chat template for ``chat_prompt``).
        device: where to run (default: CUDA when present, else CPU).
        dtype: weights' dtype (default: bfloat16 on CUDA, float32 on CPU).
        fingerprint: the base weights' fingerprint; adapters recording another are refused ("" skips).
        max_batch: the most requests in one decoding step.
        max_waiting: the most requests waiting to join (past it, ``submit`` raises ``EngineBusy``).
        name: the thread's name.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        fingerprint: str = "",
        max_batch: int = 32,
        max_waiting: int = 256,
        name: str = "generation",
    ) -> None:
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = model.requires_grad_(False).to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.max_batch, self.max_waiting = max_batch, max_waiting
        config = getattr(model, "config", None)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.lock = threading.RLock()  # the model and its banks: held by a forward and by add/remove
        self._slots = BatchSlots()
        self._layers: dict[str, MultiAdapterLayer] = {}
        self._adapters: dict[str, ServedLMAdapter] = {}
        self._free: list[int] = []
        self._next_slot = 1
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._batch: BatchKV | None = None
        self._closed = False
        self.steps = 0  # decoding steps run (a metric, and lets tests see requests share steps)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- adapters ---------------------------------------------------------------------------------

    def __contains__(self, adapter_id: object) -> bool:
        return adapter_id in self._adapters

    def get(self, adapter_id: str) -> ServedLMAdapter:
        """The loaded adapter ``adapter_id``.

        Raises:
            KeyError: it is not loaded.
        """
        return self._adapters[adapter_id]

    def add(self, adapter_id: str, adapter: Adapter, *, check_fingerprint: bool = True) -> ServedLMAdapter:
        """Load a GRFT adapter of this base into a free slot (replacing one of the same id).

        Raises:
            AdapterError: another method, a classifier adapter, or tensors that do not fit the base.
            FingerprintMismatch: it was trained on other weights.
        """
        cfg, t = adapter.config, adapter.tensors
        if adapter.method not in GRFT_KINDS:
            raise AdapterError(
                f"adapter {adapter_id} was trained with {adapter.method!r}; generation serves "
                f"{', '.join(GRFT_KINDS)} adapters",
                param="method",
            )
        if cfg.get("labels") or any(name.startswith("task_head.") for name in t):
            raise AdapterError(
                f"adapter {adapter_id} is a classifier adapter, not a language model's", param="model"
            )
        expected = cfg.get("base_fingerprint")
        if check_fingerprint and expected and self.fingerprint and expected != self.fingerprint:
            raise FingerprintMismatch(
                f"adapter {adapter_id} was trained on base weights with fingerprint {expected}; "
                f"this base's weights hash to {self.fingerprint}",
                param="base_fingerprint",
            )
        axis: Axis = "columns" if cfg.get("axis") == "columns" else "rows"
        try:
            parts = {
                m: (t[f"{m}.grft_indices"].long(), t[f"{m}.grft_delta"], t.get(f"{m}.grft_bias"))
                for m in adapter.modules
            }
        except KeyError as exc:
            raise AdapterError(
                f"adapter {adapter_id} lacks tensor {exc}", param="adapter_model.safetensors"
            ) from exc
        with self.lock:
            if adapter_id in self._adapters:
                self.remove(adapter_id)
            slot = self._free.pop() if self._free else self._next_slot
            self._next_slot = max(self._next_slot, slot + 1)
            try:
                for name, (indices, delta, bias) in parts.items():
                    self._layer(name).put(slot, axis, indices, delta, bias)
            except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
                self._clear(slot)
                self._free.append(slot)
                raise AdapterError(
                    f"adapter {adapter_id} does not fit this base: {exc}", param="modules"
                ) from exc
            size = torch.finfo(self.dtype).bits // 8
            nbytes = sum(v.numel() for v in t.values() if v.is_floating_point()) * size
            nbytes += sum(idx.numel() * 8 for idx, _, _ in parts.values())
            served = ServedLMAdapter(
                adapter_id, str(cfg.get("base_model", "")), slot, axis, tuple(parts), nbytes
            )
            self._adapters[adapter_id] = served
            return served

    def remove(self, adapter_id: str) -> bool:
        """Unload an adapter and free its slot; False if it was not loaded.

        The caller makes sure no request of it is in flight (``GenerationAdapters`` leases).
        """
        with self.lock:
            served = self._adapters.pop(adapter_id, None)
            if served is None:
                return False
            self._clear(served.slot)
            self._free.append(served.slot)
            return True

    def _clear(self, slot: int) -> None:
        for layer in self._layers.values():
            layer.clear(slot)

    def _layer(self, name: str) -> MultiAdapterLayer:
        if name not in self._layers:
            module = self.model.get_submodule(name)
            if isinstance(module, MultiAdapterLayer) or not isinstance(module, nn.Linear):
                raise ValueError(f"{name} is a {type(module).__name__}, not a Linear layer")
            layer = MultiAdapterLayer(module, self._slots)
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
            self._layers[name] = layer
        return self._layers[name]

    # -- prompts ----------------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered by the tokenizer's chat template, ready for the reply.

        Raises:
            ConfigError: the tokenizer has no chat template, or it refuses the messages.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                "this model's tokenizer has no chat template; use /v1/completions", param="model"
            )
        try:
            text = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
        except (TemplateError, ValueError, TypeError, KeyError) as exc:  # a template that refuses the turns
            raise ConfigError(f"the chat template refuses these messages: {exc}", param="messages") from exc
        # The template writes any special tokens itself (a BOS among them): none are added again.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_prompt(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt, with the tokenizer's usual special tokens."""
        return list(self.tokenizer(prompt)["input_ids"])

    # -- requests ---------------------------------------------------------------------------------

    def submit(
        self, prompt: Sequence[int], adapter_id: str | None, params: SamplingParams
    ) -> GenerationHandle:
        """Queue a request; its tokens come through the returned handle.

        Args:
            prompt: token ids (from ``chat_prompt`` or ``text_prompt``).
            adapter_id: a loaded adapter, or None for the base model.
            params: sampling parameters.
        Raises:
            KeyError: an adapter that is not loaded.
            ConfigError: an empty prompt, or one that leaves no room in the model's context.
            EngineBusy: ``max_waiting`` requests are already waiting.
        """
        if not prompt:
            raise ConfigError("the prompt is empty", param="prompt")
        if len(prompt) >= self.context_length:
            raise ConfigError(
                f"the prompt has {len(prompt)} tokens; this model reads at most {self.context_length}",
                param="prompt",
            )
        served = None if adapter_id is None else self._adapters[adapter_id]
        handle = GenerationHandle(len(prompt))
        request = _Request(
            handle,
            list(prompt),
            0 if served is None else served.slot,
            None if served is None else served.axis,
            Sampler(params),
            TextAssembler(self.tokenizer, params.stop),
            min(params.max_tokens, self.context_length - len(prompt)),
        )
        with self._cond:
            if self._closed:
                raise GenerationCancelled("the engine is closed")
            if len(self._waiting) >= self.max_waiting:
                raise EngineBusy(f"{len(self._waiting)} generation requests already waiting", retry_after=1.0)
            self._waiting.append(request)
            self._cond.notify()
        return handle

    def generate(self, prompt: Sequence[int], adapter_id: str | None, params: SamplingParams) -> Completion:
        """``submit`` and wait for the completion."""
        return self.submit(prompt, adapter_id, params).result()

    @property
    def waiting(self) -> int:
        """Requests queued and not yet in the running batch."""
        with self._cond:
            return len(self._waiting)

    def close(self) -> None:
        """Stop the thread; requests not finished end with ``GenerationCancelled``."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._running:
                    self._cond.wait()
                if self._closed:
                    break
            joining: list[_Request] = []
            try:
                with self.lock, torch.inference_mode():
                    # Picked once the model is ours: whoever holds the lock (adding an adapter) delays
                    # the step, and everything that arrived meanwhile joins it.
                    with self._cond:
                        while self._waiting and len(self._running) + len(joining) < self.max_batch:
                            joining.append(self._waiting.popleft())
                    self._prefill(joining)
                    self._drop_finished()
                    if self._running:
                        self._decode()
                        self._drop_finished()
                time.sleep(0)  # let a thread waiting for the lock (an adapter load) take it between steps
            except Exception as exc:  # one bad forward must not kill the thread: fail what it touched
                log.exception("generation step failed")
                for request in {id(r): r for r in [*self._running, *joining]}.values():
                    if not request.done:
                        request.done = True
                        request.handle.fail(exc)
                self._running, self._batch = [], None
        with self._cond:
            pending = [*self._waiting, *self._running]
            self._waiting.clear()
        for request in pending:
            request.handle.fail(GenerationCancelled("the engine closed"))
        self._running, self._batch = [], None

    def _forward(
        self, input_ids: Tensor, mask: Tensor, positions: Tensor, cache: DynamicCache, slots: list[_Request]
    ) -> Tensor:
        self._slots.slots = torch.tensor([r.slot for r in slots], device=self.device)
        self._slots.axes = frozenset(r.axis for r in slots if r.axis is not None)
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            self._slots.slots, self._slots.axes = None, frozenset()
        logits: Tensor = out.logits[:, -1].float().cpu()
        return logits

    def _prefill(self, requests: list[_Request]) -> None:
        """Run the prompts of the requests joining this step in one forward (left-padded), sample each
        one's first token, and join their caches to the running batch."""
        live = []
        for request in requests:
            if request.handle.cancelled:
                request.done = True
                request.handle.fail(GenerationCancelled("cancelled"))
            else:
                live.append(request)
        if not live:
            return
        width = max(len(r.prompt) for r in live)
        ids = torch.zeros(len(live), width, dtype=torch.long)
        mask = torch.zeros(len(live), width, dtype=torch.long)
        for row, request in enumerate(live):
            ids[row, width - len(request.prompt) :] = torch.tensor(request.prompt)
            mask[row, width - len(request.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache(config=getattr(self.model, "config", None))
        logits = self._forward(ids, mask, positions, cache, live)
        check_full_attention(cache)
        joined = BatchKV(cache, mask, mask.sum(1))
        self._running.extend(live)
        if self._batch is None:
            self._batch = joined
        else:
            self._batch.join(joined)
        for request, row in zip(live, logits, strict=True):
            self._accept(request, row)

    def _decode(self) -> None:
        batch = self._batch
        assert batch is not None
        mask, positions = batch.step_inputs()
        ids = torch.tensor([[r.next_token] for r in self._running], device=self.device)
        logits = self._forward(ids, mask, positions, batch.cache, self._running)
        batch.advance(mask)
        self.steps += 1
        for request, row in zip(self._running, logits, strict=True):
            self._accept(request, row)

    def _accept(self, request: _Request, logits: Tensor) -> None:
        """Sample the request's next token and hand out its text; finish it when it is done."""
        token = request.sampler(logits)
        request.next_token = token
        text = request.text
        if token in self.eos_ids:
            text.token_ids.append(token)
            self._finish(request, "stop")
            return
        request.handle.put_text(text.push(token))
        if text.stopped:
            self._finish(request, "stop")
        elif len(text.token_ids) >= request.max_tokens:
            self._finish(request, "length")

    def _finish(self, request: _Request, reason: str) -> None:
        text = request.text
        request.handle.put_text(text.flush())
        request.handle.finish(
            Completion(
                text=text.text,
                token_ids=tuple(text.token_ids),
                finish_reason="stop" if reason == "stop" else "length",
                prompt_tokens=len(request.prompt),
                completion_tokens=len(text.token_ids),
            )
        )
        request.done = True

    def _drop_finished(self) -> None:
        for request in self._running:
            if request.handle.cancelled and not request.done:
                request.handle.fail(GenerationCancelled("cancelled"))
                request.done = True
        keep = [i for i, r in enumerate(self._running) if not r.done]
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._batch = None
        elif self._batch is not None:
            self._batch.keep(torch.tensor(keep, device=self.device))


def _eos_ids(model: nn.Module, tokenizer: Any) -> frozenset[int]:
    """Token ids that end a completion: the generation config's and the tokenizer's end-of-sequence."""
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for value in (getattr(generation, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
