"""Causal language models in the shared trainer: a model view that returns the logits of the target
tokens only, and a collator that pads length-bucketed batches.

The trainer, the selection pass and the evaluation speak classification: ``model(inputs)`` gives logits,
the batch gives labels, and the loss is ``cross_entropy(logits, labels)``. ``CausalLMForTraining``
makes a language model fit that contract exactly: its forward runs the decoder and applies the output
projection only at the positions whose next token is a label (the assistant's tokens), and
``CausalLMCollator`` returns those next tokens as the batch's labels. So the training loss is the mean
cross-entropy over assistant tokens, the selection pass scores rows by the gradients of that same loss,
the evaluation's accuracy is the mean next-token accuracy on assistant tokens, and no ``(N, T, V)``
logits tensor is ever built for padding or prompt positions.

The view registers the language model's own children under their own names, so module names
(``model.layers.0.self_attn.q_proj``) are the Hugging Face ones: an adapter trained through the view
applies to the plain model. The output projection (``lm_head``, often tied to the input embeddings) is
reported by ``get_output_embeddings`` and therefore never eligible (``grft_core.method.model``).

Batches are bucketed by length, not packed: each epoch's seeded permutation is cut into windows of 64
batches, each window is sorted by length and cut into batches, and the batches are shuffled. Padding
then stays small without letting examples attend across each other, as packing would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["BUCKET_WINDOW", "CausalLMCollator", "CausalLMForTraining", "enable_memory_savers"]

#: The label of a position the loss ignores (as in ``grft_core.data.chat_tokens``; PyTorch's default).
IGNORE_INDEX = -100


class TokenizedExample(Protocol):
    """What the collator reads of an example (``grft_core.data.chat_tokens.TokenizedExample``)."""

    input_ids: list[int]
    labels: list[int]


#: Batches per sorting window: wide enough that neighbours in a window have similar lengths, narrow
#: enough that an epoch's batch order stays well mixed.
BUCKET_WINDOW = 64


class CausalLMForTraining(nn.Module):
    """A view of a transformers causal LM whose forward returns the logits of the target positions.

    Args:
        lm: a ``*ForCausalLM`` model; its children become this module's children (same objects, same
            names), so wrapping layers through the view changes ``lm`` too.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        for name, child in lm.named_children():
            self.add_module(name, child)
        # Kept outside the module tree: its children are already registered above.
        self.__dict__["_lm"] = lm

    @property
    def lm(self) -> nn.Module:
        """The wrapped language model."""
        lm: nn.Module = self.__dict__["_lm"]
        return lm

    def get_output_embeddings(self) -> nn.Module:
        """The output projection (never a GRFT target)."""
        head: nn.Module = self.lm.get_output_embeddings()  # type: ignore[operator]
        return head

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Next-token logits at the target positions.

        Args:
            batch: ``input_ids``, ``attention_mask`` and ``target_mask`` (``(N, T)``, true where the next
                token is a label), as ``CausalLMCollator`` makes them.
        Returns:
            ``(targets, vocab)`` logits, in row-major order of ``target_mask``.
        """
        decoder: nn.Module = self.lm.get_decoder()  # type: ignore[operator]
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        logits: Tensor = self.get_output_embeddings()(hidden[batch["target_mask"]])
        cap = getattr(getattr(self.lm, "config", None), "final_logit_softcapping", None)
        if cap:  # Gemma: the model's own logits are soft-capped; train on the same ones it serves
            logits = torch.tanh(logits / cap) * cap
        return logits


def enable_memory_savers(model: CausalLMForTraining, device: torch.device) -> bool:
    """Turn on gradient checkpointing where a CUDA GPU trains (memory there is the limit; on the CPU
    recomputing every layer would only cost time). Returns whether it was turned on."""
    if device.type != "cuda":
        return False
    enable = getattr(model.lm, "gradient_checkpointing_enable", None)
    if enable is None:
        return False
    # Non-reentrant checkpointing works with frozen inputs and with GRFT's custom autograd functions.
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return True


class CausalLMCollator:
    """Pads tokenized examples into a batch whose labels are the target tokens (the trainer's labels).

    Args:
        pad_token_id: id written into padding (masked out by the attention mask either way).
        max_length: the sequence length the examples were cut to (recorded in the adapter).
    """

    modality = "text"

    def __init__(self, pad_token_id: int, max_length: int) -> None:
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, items: Sequence[TokenizedExample]) -> dict[str, Tensor]:
        """Pad ``items`` on the right.

        Returns:
            ``input_ids`` and ``attention_mask`` ``(N, T)``; ``target_mask`` ``(N, T)``, true at ``t``
            when token ``t + 1`` is a label; ``labels``, the label tokens in ``target_mask`` order.
        """
        width = max((len(e.input_ids) for e in items), default=1)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(items):
            n = len(example.input_ids)
            ids[row, :n] = torch.as_tensor(example.input_ids, dtype=torch.long)
            attention[row, :n] = 1
            labels[row, :n] = torch.as_tensor(example.labels, dtype=torch.long)
        following = labels[:, 1:]
        target_mask = torch.zeros((len(items), width), dtype=torch.bool)
        target_mask[:, :-1] = following != IGNORE_INDEX
        return {
            "input_ids": ids,
            "attention_mask": attention,
            "target_mask": target_mask,
            "labels": following[following != IGNORE_INDEX],
        }

    def bucket(self, items: Sequence[TokenizedExample], order: Tensor, batch_size: int, seed: int) -> Tensor:
        """Reorder a shuffled ``order`` so that consecutive ``batch_size`` slices have similar lengths.

        Args:
            items: the dataset.
            order: a permutation of its indices (the epoch's shuffle).
            batch_size: examples per batch.
            seed: seeds the shuffle of the batches (a pure function of it: resumes replay it).
        Returns:
            a permutation of the same indices: sorted windows of ``BUCKET_WINDOW`` batches, cut into
            batches, the batches shuffled (a short last batch stays last).
        """
        window = batch_size * BUCKET_WINDOW
        batches: list[Tensor] = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            lengths = torch.as_tensor([len(items[int(i)].input_ids) for i in chunk])
            chunk = chunk[torch.argsort(lengths, stable=True)]
            batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
        if not batches:
            return order
        tail = [batches.pop()] if len(batches[-1]) < batch_size else []
        g = torch.Generator().manual_seed(seed)
        shuffled = [batches[int(i)] for i in torch.randperm(len(batches), generator=g)]
        return torch.cat(shuffled + tail)

    def to_dict(self) -> dict[str, Any]:
        """What the adapter records about the inputs the model was trained on."""
        return {"kind": "causal_lm", "max_length": self.max_length}
