"""One copy of a base model serving any number of GRFT adapters, in heterogeneous batches.

``ServingEngine`` owns a base classifier. ``add`` gives an adapter a slot: its rows go into the banks of
the ``MultiAdapterLayer`` that replaced each module it changes (the base weights are never touched), its
head into the head bank. ``logits`` runs a batch whose items each name an adapter (or ``None`` for the
base model's own head): one forward of the shared backbone, every layer adding each item's own rows,
then each item's head, gathered by slot, as one batched matmul. Heads with fewer labels than the widest
are padded with ``-inf`` logits, so a softmax over the padded row is the item's own softmax.

A forward and any change of the slots hold the engine's lock: the slots of the batch in flight are
shared state of the model's layers. Batching many callers into one forward is ``DynamicBatcher``'s job.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from grft_core.adapters.format import GRFT_KINDS, Adapter, backbone_fingerprint
from grft_core.data.preprocess import Preprocessor, make_preprocessor
from grft_core.errors import AdapterError, FingerprintMismatch
from grft_core.method.layers import Axis
from grft_core.method.model import HEAD
from grft_core.models.classifier import Classifier
from grft_core.models.registry import ModelSpec
from grft_core.serving.layer import BatchSlots, MultiAdapterLayer


@dataclass(frozen=True)
class ServedAdapter:
    """What the engine knows of a loaded adapter.

    Attributes:
        id: the caller's name for it.
        base_model: the base it was trained on (from its config).
        slot: its slot in every bank (>= 1).
        labels: class names, in head order.
        axis: rows or columns.
        modules: the modules it changes.
        nbytes: bytes its tensors take on the engine's device (deltas, bias deltas, head).
        image_size: the image size it was trained at (image models), or None.
        max_length: the token limit it was trained with (text models), or None.
    """

    id: str
    base_model: str
    slot: int
    labels: tuple[str, ...]
    axis: Axis
    modules: tuple[str, ...]
    nbytes: int
    image_size: int | None
    max_length: int | None

    @property
    def preprocess_key(self) -> tuple[int | None, int | None]:
        """Items with equal keys are preprocessed alike and can share a forward pass."""
        return self.image_size, self.max_length


class ServingEngine:
    """A base classifier plus the slots of every adapter it serves.

    Args:
        model: the base classifier; the engine takes it over (frozen, eval mode, layers replaced).
        spec: the registry entry, needed to preprocess raw items (``probabilities``).
        device: where to run (default: CUDA when present, else CPU).
        dtype: weights' dtype (default: bfloat16 on CUDA, float32 on CPU).
        fingerprint: the base weights' fingerprint, when already known (else computed here).
    """

    def __init__(
        self,
        model: Classifier,
        *,
        spec: ModelSpec | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        # Before the dtype cast: adapters record the fingerprint of the weights as trained.
        self.fingerprint = fingerprint or backbone_fingerprint(model)
        self.model = model.requires_grad_(False).to(self.device, self.dtype).eval()
        self.spec = spec
        self.lock = threading.RLock()
        self._slots = BatchSlots()
        self._layers: dict[str, MultiAdapterLayer] = {}
        self._adapters: dict[str, ServedAdapter] = {}
        self._free: list[int] = []
        self._next_slot = 1
        self._preprocessors: dict[tuple[int | None, int | None], Preprocessor] = {}
        head = self.model.task_head
        self._head_w = head.weight.detach().clone().unsqueeze(0)  # (slots, labels, features)
        self._head_b = head.bias.detach().clone().unsqueeze(0)
        self._labels = torch.tensor([head.out_features], device=self.device)

    # -- adapters ---------------------------------------------------------------------------------

    def __contains__(self, adapter_id: object) -> bool:
        return adapter_id in self._adapters

    def get(self, adapter_id: str) -> ServedAdapter:
        """The served adapter named ``adapter_id``.

        Raises:
            KeyError: it is not loaded.
        """
        return self._adapters[adapter_id]

    def adapters(self) -> list[ServedAdapter]:
        """Every adapter loaded now."""
        return list(self._adapters.values())

    def add(self, adapter_id: str, adapter: Adapter, *, check_fingerprint: bool = True) -> ServedAdapter:
        """Load an adapter into a free slot (replacing one of the same id).

        Args:
            adapter_id: the name items use for it.
            adapter: from ``load_adapter``: a GRFT, masked-dense or linear-probe adapter of this base.
            check_fingerprint: refuse an adapter trained on other base weights.
        Returns:
            its ``ServedAdapter``.
        Raises:
            AdapterError: another method, or tensors that do not fit the base.
            FingerprintMismatch: it was trained on other weights.
        """
        cfg, t = adapter.config, adapter.tensors
        if adapter.method not in GRFT_KINDS:
            raise AdapterError(
                f"adapter {adapter_id} was trained with {adapter.method!r}; the engine serves "
                f"{', '.join(GRFT_KINDS)} adapters",
                param="method",
            )
        expected = cfg.get("base_fingerprint")
        if check_fingerprint and expected and expected != self.fingerprint:
            raise FingerprintMismatch(
                f"adapter {adapter_id} was trained on base weights with fingerprint {expected}; "
                f"this base's weights hash to {self.fingerprint}",
                param="base_fingerprint",
            )
        labels = tuple(str(label) for label in cfg.get("labels", []))
        axis: Axis = "columns" if cfg.get("axis") == "columns" else "rows"
        try:
            head_w, head_b = t[f"{HEAD}.weight"], t[f"{HEAD}.bias"]
            parts = {
                m: (t[f"{m}.grft_indices"].long(), t[f"{m}.grft_delta"], t.get(f"{m}.grft_bias"))
                for m in adapter.modules
            }
        except KeyError as exc:
            raise AdapterError(
                f"adapter {adapter_id} lacks tensor {exc}", param="adapter_model.safetensors"
            ) from exc
        if not labels or tuple(head_w.shape) != (len(labels), self.model.num_features):
            raise AdapterError(
                f"adapter {adapter_id}: head {tuple(head_w.shape)} does not fit {len(labels)} labels on "
                f"{self.model.num_features} features",
                param="adapter_model.safetensors",
            )
        with self.lock:
            if adapter_id in self._adapters:
                self.remove(adapter_id)
            slot = self._free.pop() if self._free else self._next_slot
            self._next_slot = max(self._next_slot, slot + 1)
            try:
                for name, (indices, delta, bias) in parts.items():
                    self._layer(name).put(slot, axis, indices, delta, bias)
                self._put_head(slot, head_w, head_b)
            except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
                self._clear(slot)
                raise AdapterError(
                    f"adapter {adapter_id} does not fit this base: {exc}", param="modules"
                ) from exc
            nbytes = sum(v.numel() for v in t.values() if v.is_floating_point()) * self._head_w.element_size()
            nbytes += sum(idx.numel() * 8 for idx, _, _ in parts.values())
            train_cfg = cfg.get("config") or {}
            served = ServedAdapter(
                id=adapter_id,
                base_model=str(cfg.get("base_model", "")),
                slot=slot,
                labels=labels,
                axis=axis,
                modules=tuple(parts),
                nbytes=nbytes,
                image_size=train_cfg.get("image_size"),
                max_length=train_cfg.get("max_length"),
            )
            self._adapters[adapter_id] = served
            return served

    def remove(self, adapter_id: str) -> bool:
        """Unload an adapter and free its slot; False if it was not loaded."""
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
        if slot < self._head_w.shape[0]:
            self._head_w[slot] = 0
            self._head_b[slot] = 0
            self._labels[slot] = 1

    def _layer(self, name: str) -> MultiAdapterLayer:
        if name not in self._layers:
            module = self.model.get_submodule(name)
            if name == HEAD or name.startswith(HEAD + ".") or isinstance(module, MultiAdapterLayer):
                raise ValueError(f"{name} cannot carry an adapter")
            layer = MultiAdapterLayer(module, self._slots)
            parent_name, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent_name) if parent_name else self.model, child, layer)
            self._layers[name] = layer
        return self._layers[name]

    def _put_head(self, slot: int, weight: Tensor, bias: Tensor) -> None:
        slots = max(slot + 1, self._head_w.shape[0])
        labels = max(int(weight.shape[0]), self._head_w.shape[1])
        if (slots, labels) != tuple(self._head_w.shape[:2]):
            grown_w = self._head_w.new_zeros(slots, labels, self._head_w.shape[2])
            grown_b = self._head_b.new_zeros(slots, labels)
            grown_w[: self._head_w.shape[0], : self._head_w.shape[1]] = self._head_w
            grown_b[: self._head_b.shape[0], : self._head_b.shape[1]] = self._head_b
            grown_l = self._labels.new_ones(slots)
            grown_l[: self._labels.shape[0]] = self._labels
            self._head_w, self._head_b, self._labels = grown_w, grown_b, grown_l
        n = int(weight.shape[0])
        self._head_w[slot] = 0
        self._head_b[slot] = 0
        self._head_w[slot, :n] = weight.to(self._head_w)
        self._head_b[slot, :n] = bias.to(self._head_b)
        self._labels[slot] = n

    # -- running ----------------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, inputs: Mapping[str, Tensor], adapter_ids: Sequence[str | None]) -> Tensor:
        """Per-item logits of a preprocessed batch; item i uses adapter ``adapter_ids[i]``.

        Args:
            inputs: a preprocessed batch (on any device; moved to the engine's).
            adapter_ids: one per item: a loaded adapter's id, or None for the base model's own head.
        Returns:
            ``(B, L)`` float32 logits, L the widest head among the batch's adapters; an item's entries past
            its own label count are ``-inf``.
        Raises:
            KeyError: an id that is not loaded.
        """
        with self.lock:
            served = [None if a is None else self._adapters[a] for a in adapter_ids]
            slots = torch.tensor([0 if s is None else s.slot for s in served], device=self.device)
            batch = {k: v.to(self.device) for k, v in inputs.items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
            self._slots.slots = slots
            self._slots.axes = frozenset(s.axis for s in served if s is not None)
            try:
                features = self.model.features(batch)
            finally:
                self._slots.slots, self._slots.axes = None, frozenset()
            counts = self._labels[slots]
            width = int(counts.max()) if len(served) else 1
            weight = self._head_w[slots, :width]  # (B, L, F)
            bias = self._head_b[slots, :width]
            out = torch.baddbmm(bias.unsqueeze(2), weight, features.to(weight.dtype).unsqueeze(2)).squeeze(2)
            out = out.float()
            pad = torch.arange(width, device=self.device)[None, :] >= counts[:, None]
            return out.masked_fill(pad, float("-inf"))

    def preprocessor(self, key: tuple[int | None, int | None]) -> Preprocessor:
        """The preprocessing for ``(image_size, max_length)`` (built once per key).

        Raises:
            ValueError: the engine was built without a model spec.
        """
        if self.spec is None:
            raise ValueError("this engine has no model spec: pass preprocessed inputs to logits()")
        if key not in self._preprocessors:
            built = make_preprocessor(self.spec, image_size=key[0], max_length=key[1])
            self._preprocessors.setdefault(key, built)
        return self._preprocessors[key]

    def probabilities(
        self, items: Sequence[Any], adapter_ids: Sequence[str | None], *, batch_size: int = 64
    ) -> list[Tensor]:
        """Class probabilities of raw items (PIL images or strings), each under its own adapter.

        Items whose adapters were trained with different preprocessing (image size, token limit) run in
        separate forwards; everything else shares one per ``batch_size`` items.

        Returns:
            per item, in order, a float32 CPU tensor of its adapter's label count.
        Raises:
            KeyError: an id that is not loaded.
            ValueError: ``items`` and ``adapter_ids`` differ in length.
        """
        if len(items) != len(adapter_ids):
            raise ValueError(f"{len(items)} items but {len(adapter_ids)} adapter ids")
        groups: dict[tuple[int | None, int | None], list[int]] = {}
        for i, a in enumerate(adapter_ids):
            key = (None, None) if a is None else self._adapters[a].preprocess_key
            groups.setdefault(key, []).append(i)
        out: list[Tensor] = [torch.empty(0)] * len(items)
        for key, positions in groups.items():
            pre = self.preprocessor(key)
            for start in range(0, len(positions), batch_size):
                chunk = positions[start : start + batch_size]
                inputs = pre([items[i] for i in chunk])
                probs = torch.softmax(self.logits(inputs, [adapter_ids[i] for i in chunk]), 1).cpu()
                for row, i in enumerate(chunk):
                    n = (
                        len(self._adapters[a].labels)
                        if (a := adapter_ids[i]) is not None
                        else self.num_labels
                    )
                    out[i] = probs[row, :n]
        return out

    @property
    def num_labels(self) -> int:
        """Label count of the base model's own head (items with no adapter)."""
        return int(self._labels[0])
