"""Hosted inference: one copy of each base model serves every adapter trained on it.

How an adapter is applied without copying its base:

* **Bases** (``LoadedBase``): each registry model is loaded once per process (``registry.load``), kept in
  eval mode and never modified at rest. Its head is unused: every adapter brings its own.
* **Adapters** (``LoadedAdapter``): the separable state read from the adapter file, per wrapped module
  the sorted indices, the delta rows/columns and the bias delta, plus the head weight and bias. On first
  use the adapter is also given one ``GRFTLayer`` per module, built around the base's *own* module
  object: the wrapper references the base weight, it does not copy it, so an adapter costs its deltas
  and its head, nothing more.
* **A request** (``_installed``), under the base's lock: the adapter's wrappers are swapped into the
  shared model in place of the base modules, the batch runs through the backbone and then through the
  adapter's head, and the base modules are put back (in a ``finally``). This is exactly what
  ``grft_core.adapter.apply_adapter`` builds (same wrapper class, same unmerged forward, same head
  arithmetic), so the answers equal ``load_adapted`` + ``predict_proba`` bit for bit.

Adapters live in an LRU (default 32). Their files are downloaded from the artifact store into a cache
folder private to this process, on first use, and removed on eviction. Loading checks the adapter's
recorded base fingerprint against the loaded base. Multi-adapter batching can build on ``LoadedAdapter``:
its tensors are plain and per module, ready to be gathered per item.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from api.adapters.models import Adapter
from api.adapters.service import artifact_key
from api.artifacts import ArtifactStore
from api.errors import NotFound
from api.settings import Settings
from grft_core.adapter import GRFT_KINDS, backbone_fingerprint, load_adapter
from grft_core.batching import BatchSource
from grft_core.classifier import Classifier
from grft_core.errors import AdapterError, FingerprintMismatch
from grft_core.layers import GRFTLayer
from grft_core.model import HEAD
from grft_core.preprocess import Preprocessor, make_preprocessor
from grft_core.registry import ModelRegistry, ModelSpec

# predict_proba's batch size: text pads to the longest item of a batch, so equal batching keeps the
# service's numbers identical to the library's.
PREDICT_BATCH = 64
DEFAULT_MAX_ADAPTERS = 32
#: A prediction: the label and the top-5 ``(label, probability)`` pairs, best first.
Ranked = tuple[str, list[tuple[str, float]]]
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class AdapterRef:
    """What inference needs of an adapter row: its id, its folder's store key, its base model."""

    id: str
    key: str
    base_model: str

    @classmethod
    def from_row(cls, row: Adapter, store: ArtifactStore) -> AdapterRef:
        return cls(id=row.id, key=artifact_key(store, row), base_model=row.base_model)


@dataclass
class ModuleDelta:
    """One wrapped module's part of an adapter: sorted indices along ``axis``, the delta, the bias delta."""

    indices: Tensor
    delta: Tensor
    bias: Tensor | None


@dataclass
class LoadedAdapter:
    id: str
    base_model: str
    modality: str
    labels: list[str]
    axis: Literal["rows", "columns"]
    modules: dict[str, ModuleDelta]
    head_weight: Tensor
    head_bias: Tensor
    image_size: int | None
    max_length: int | None
    layers: dict[str, GRFTLayer] = field(default_factory=dict)


@dataclass
class LoadedBase:
    name: str
    model: Classifier
    spec: ModelSpec
    fingerprint: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    preprocessors: dict[tuple[int | None, int | None], Preprocessor] = field(default_factory=dict)


class InferenceService:
    """Process-wide: loaded bases, an LRU of loaded adapters, and the predict path.

    Args:
        store: where adapter folders live.
        registry: the base models.
        cache_root: parent of this process's private adapter cache folder.
        max_adapters: LRU capacity.
        device: where models run (default: CUDA when present, else CPU).
    """

    def __init__(
        self,
        store: ArtifactStore,
        registry: ModelRegistry,
        cache_root: Path,
        *,
        max_adapters: int = DEFAULT_MAX_ADAPTERS,
        device: torch.device | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_adapters = max_adapters
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cache_root.mkdir(parents=True, exist_ok=True)
        # Private to this process: replicas sharing a home folder never read each other's half-written
        # copies, and everything goes when the service does.
        self.cache_dir = Path(tempfile.mkdtemp(prefix="adapters-", dir=cache_root))
        weakref.finalize(self, shutil.rmtree, self.cache_dir, True)
        self.base_loads: Counter[str] = Counter()
        self._bases: dict[str, LoadedBase] = {}
        self._adapters: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._lru_lock = threading.Lock()  # guards _adapters (cheap, held briefly)
        self._load_lock = threading.Lock()  # one load at a time: a base is never loaded twice

    # -- the predict path -------------------------------------------------------------------------

    def predict(
        self, adapter: LoadedAdapter, items: Sequence[Any]
    ) -> list[tuple[str, list[tuple[str, float]]]]:
        """Per decoded item, in order: the label and the top-5 ``(label, probability)`` pairs."""
        return [_ranked(row, adapter.labels) for row in self.probabilities(adapter, items)]

    def probabilities(self, adapter: LoadedAdapter, items: Sequence[Any]) -> Tensor:
        """``(n, num_labels)`` class probabilities of decoded items (PIL images or strings)."""
        base = self._bases[adapter.base_model]
        preprocessor = self._preprocessor(base, adapter)
        # Images are decoded and resized here, outside the lock: only the forward needs the model.
        source = BatchSource(items, [0] * len(items), preprocessor, self.device)
        with base.lock, self._installed(base, adapter), torch.no_grad():
            out = [
                torch.softmax(self._logits(base, adapter, inputs).float(), 1).cpu()
                for inputs, _ in source.sequential(PREDICT_BATCH)
            ]
        return torch.cat(out) if out else torch.empty(0, len(adapter.labels))

    @staticmethod
    def _logits(base: LoadedBase, adapter: LoadedAdapter, inputs: dict[str, Tensor]) -> Tensor:
        # Classifier.forward is task_head(features(x)) and nn.Linear is F.linear: the same arithmetic.
        return F.linear(base.model.features(inputs), adapter.head_weight, adapter.head_bias)

    @contextmanager
    def _installed(self, base: LoadedBase, adapter: LoadedAdapter) -> Iterator[None]:
        """Swap the adapter's wrappers into the shared model; always put the base modules back."""
        swapped: dict[str, nn.Module] = {}
        try:
            for name, layer in adapter.layers.items():
                swapped[name] = _swap(base.model, name, layer)
            yield
        finally:
            for name, original in swapped.items():
                _swap(base.model, name, original)

    @staticmethod
    def _preprocessor(base: LoadedBase, adapter: LoadedAdapter) -> Preprocessor:
        # Building one resolves timm's data config or loads a tokenizer: cache per (size, length). Two
        # first requests may both build it; they build the same thing and one copy is kept.
        key = (adapter.image_size, adapter.max_length)
        if key not in base.preprocessors:
            built = make_preprocessor(base.spec, image_size=adapter.image_size, max_length=adapter.max_length)
            base.preprocessors.setdefault(key, built)
        return base.preprocessors[key]

    # -- loading ----------------------------------------------------------------------------------

    def adapter(self, ref: AdapterRef) -> LoadedAdapter:
        """The loaded adapter, from the LRU or loaded now (downloaded, checked, wrappers built)."""
        with self._lru_lock:
            if (hit := self._adapters.get(ref.id)) is not None:
                self._adapters.move_to_end(ref.id)
                return hit
        with self._load_lock:
            with self._lru_lock:
                if (hit := self._adapters.get(ref.id)) is not None:
                    return hit
            loaded = self._load_adapter(ref)
            with self._lru_lock:
                self._adapters[ref.id] = loaded
                evicted = []
                while len(self._adapters) > self.max_adapters:
                    evicted.append(self._adapters.popitem(last=False)[0])
            for adapter_id in evicted:
                shutil.rmtree(self.cache_dir / adapter_id, ignore_errors=True)
            return loaded

    def evict(self, adapter_id: str) -> None:
        """Forget an adapter (deleted): drop it from the LRU and its cached files."""
        with self._load_lock:
            with self._lru_lock:
                self._adapters.pop(adapter_id, None)
            if _SAFE_ID.match(adapter_id):
                shutil.rmtree(self.cache_dir / adapter_id, ignore_errors=True)

    def cached_ids(self) -> list[str]:
        """Adapter ids in the LRU, least recently used first."""
        with self._lru_lock:
            return list(self._adapters)

    def _base(self, name: str) -> LoadedBase:
        """The shared base model (called under the load lock: loaded once per process)."""
        if name not in self._bases:
            # num_labels=1: the registry's head is never used, each adapter brings its own.
            model, spec = self.registry.load(name, num_labels=1)
            self.base_loads[name] += 1
            model.requires_grad_(False)
            fingerprint = backbone_fingerprint(model)
            self._bases[name] = LoadedBase(name, model.to(self.device).eval(), spec, fingerprint)
        return self._bases[name]

    def _download(self, ref: AdapterRef) -> Path:
        if not _SAFE_ID.match(ref.id):
            raise AdapterError(f"adapter id {ref.id!r} is not a plain id", param="adapter_id")
        final = self.cache_dir / ref.id
        if final.is_dir():
            return final
        if not self.store.exists(ref.key):
            raise NotFound(f"the files of adapter {ref.id!r} are missing", param="adapter_id")
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache_dir))
        try:
            self.store.get_folder(ref.key, partial)
            os.replace(partial, final)  # whole or absent: a failed download never looks complete
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return final

    def _load_adapter(self, ref: AdapterRef) -> LoadedAdapter:
        folder = self._download(ref)
        try:
            return self._build(ref, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _build(self, ref: AdapterRef, folder: Path) -> LoadedAdapter:
        file = load_adapter(folder)
        cfg, t = file.config, file.tensors
        if file.method not in GRFT_KINDS:
            raise AdapterError(
                f"adapter {ref.id} was trained with {file.method!r}; hosted inference serves "
                f"{', '.join(GRFT_KINDS)} adapters (download it to serve it yourself)",
                param="method",
            )
        base = self._base(str(cfg.get("base_model", ref.base_model)))
        expected = cfg.get("base_fingerprint")
        if expected and expected != base.fingerprint:
            raise FingerprintMismatch(
                f"adapter {ref.id} was trained on {base.name!r} weights with fingerprint {expected}; "
                f"the registered weights hash to {base.fingerprint}",
                param="base_fingerprint",
            )
        labels = [str(label) for label in cfg.get("labels", [])]
        head_dtype = base.model.task_head.weight.dtype
        try:
            head_weight = t[f"{HEAD}.weight"].to(self.device, head_dtype)
            head_bias = t[f"{HEAD}.bias"].to(self.device, head_dtype)
            modules = {
                m: ModuleDelta(t[f"{m}.grft_indices"].long(), t[f"{m}.grft_delta"], t.get(f"{m}.grft_bias"))
                for m in file.modules
            }
        except KeyError as exc:
            raise AdapterError(
                f"adapter {ref.id} lacks tensor {exc}", param="adapter_model.safetensors"
            ) from exc
        if tuple(head_weight.shape) != (len(labels), base.model.num_features) or not labels:
            raise AdapterError(
                f"adapter {ref.id}: head {tuple(head_weight.shape)} does not fit {len(labels)} labels "
                f"on {base.model.num_features} features",
                param="adapter_model.safetensors",
            )
        train_cfg = cfg.get("config") or {}
        loaded = LoadedAdapter(
            id=ref.id,
            base_model=base.name,
            modality=base.spec.modality,
            labels=labels,
            axis="columns" if cfg.get("axis") == "columns" else "rows",
            modules=modules,
            head_weight=head_weight,
            head_bias=head_bias,
            image_size=train_cfg.get("image_size"),
            max_length=train_cfg.get("max_length"),
        )
        with base.lock:  # the wrappers must see the unwrapped base modules
            loaded.layers = _wrappers(base.model, loaded, self.device)
        return loaded


_STATE_ATTR = "inference"
_create_lock = threading.Lock()


def service_for(state: Any, settings: Settings) -> InferenceService:
    """The process's one ``InferenceService``, kept on the app's ``state`` and created on first use."""
    service: InferenceService | None = getattr(state, _STATE_ATTR, None)
    if service is None:
        with _create_lock:
            service = getattr(state, _STATE_ATTR, None)
            if service is None:
                service = InferenceService(
                    ArtifactStore(settings.artifact_url),
                    ModelRegistry(settings.model_dir),
                    settings.home / "cache",
                )
                setattr(state, _STATE_ATTR, service)
    return service


def forget_adapter(state: Any, adapter_id: str) -> None:
    """Evict a deleted adapter from this process's service, if one was ever started."""
    service: InferenceService | None = getattr(state, _STATE_ATTR, None)
    if service is not None:
        service.evict(adapter_id)


def _wrappers(model: nn.Module, adapter: LoadedAdapter, device: torch.device) -> dict[str, GRFTLayer]:
    """One ``GRFTLayer`` per module around the shared base module, filled as ``apply_adapter`` fills it.

    Like ``apply_adapter``, a bias delta is given to every wrapper once any module has one (zeros where
    a module has none), so the bias arithmetic matches it exactly.
    """
    has_bias = any(d.bias is not None for d in adapter.modules.values())
    layers: dict[str, GRFTLayer] = {}
    try:
        for name, part in adapter.modules.items():
            layer = GRFTLayer(model.get_submodule(name), part.indices, adapter.axis, train_bias=has_bias)
            with torch.no_grad():
                if tuple(part.delta.shape) != tuple(layer.grft_delta.shape):
                    raise ValueError(
                        f"{name}: delta {tuple(part.delta.shape)}, expected {tuple(layer.grft_delta.shape)}"
                    )
                layer.grft_delta.copy_(part.delta)
                if layer.grft_bias is not None and part.bias is not None:
                    layer.grft_bias.copy_(part.bias)
            layers[name] = layer.requires_grad_(False).to(device).eval()
            # The adapter's tensors are the wrapper's from now on: one copy of each delta, not two.
            adapter.modules[name] = ModuleDelta(
                layer.grft_indices,
                layer.grft_delta.detach(),
                layer.grft_bias.detach() if (layer.grft_bias is not None and part.bias is not None) else None,
            )
    except (AttributeError, ValueError, RuntimeError) as exc:
        raise AdapterError(
            f"adapter {adapter.id} does not fit {adapter.base_model}: {exc}", param="modules"
        ) from exc
    return layers


def _swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.Module = getattr(parent, child)
    setattr(parent, child, new)
    return old


def _ranked(probs: Tensor, labels: Sequence[str]) -> Ranked:
    # A stable sort puts the lowest index first among ties, as argmax does.
    order = torch.sort(probs, descending=True, stable=True).indices[: min(5, len(labels))]
    top = [(labels[int(i)], min(max(float(probs[int(i)]), 0.0), 1.0)) for i in order]
    return top[0][0], top
