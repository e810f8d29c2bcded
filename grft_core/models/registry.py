"""The local model store: which base models exist, where their weights live and what they hash to.

The store is a folder (given by the caller; else ``$GRFT_MODEL_DIR``, else ``~/.cache/grft/models``) with
one sub-folder per model
(``<name>/model.safetensors``, plus ``config.json`` and tokenizer files for transformers models) and an
index, ``registry.json``. Built-in entries (``grft_core.models.builtins``: ``mobilenetv2_100``,
``all-minilm-l6-v2`` and the tiny test models) are written into the store the first time they are asked
for; an entry's spec and the writing of its weights are ``grft_core.models.entries``.

Every write goes to a temporary file and is renamed into place, and index updates hold an exclusive file
lock, so two processes materialising the store at once end with the same, complete result.
Stored weights hold the backbone only (no classifier, no pooler), so they load strictly and the
fingerprint covers exactly the tensors a fine-tune starts from.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grft_core.errors import ConfigError, FingerprintMismatch, ModelNotFound
from grft_core.models.builtins import BUILTIN_MODELS
from grft_core.models.causal import (
    BUILTIN_CAUSAL_LMS,
    CAUSAL_LM,
    build_causal_lm_entry,
    load_causal_lm_spec,
    pending_builtin_spec,
)
from grft_core.models.classifier import (
    Classifier,
    create_timm_backbone,
    create_transformers_backbone,
    feature_dim,
    fit_timm_state,
    load_backbone_state,
)
from grft_core.models.entries import WEIGHTS_FILE, ModelSpec, finish_entry, transformers_entry
from grft_core.models.serialization import (
    copy_file_atomic,
    fingerprint_state_dict,
    load_safetensors,
    save_json_atomic,
)
from grft_core.models.tokenizers import copy_tokenizer_files, load_tokenizer

# ``ModelSpec`` (grft_core.models.entries) and ``BUILTIN_MODELS`` (grft_core.models.builtins) are
# re-exported: this module stays the one to import them from.
__all__ = [
    "BUILTIN_CAUSAL_LMS",
    "BUILTIN_MODELS",
    "USER_STORE_DIR",
    "ModelRegistry",
    "ModelSpec",
    "default_store_dir",
    "is_builtin",
]

INDEX_FILE = "registry.json"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # also a folder name: no separators, no "..".
#: The store of a user who configured none.
USER_STORE_DIR = Path.home() / ".cache" / "grft" / "models"
#: The library's one reading of the environment, for callers that pass no folder (notebooks, the
#: ``grft`` CLI). A service reads its own configuration and passes the folder to ``ModelRegistry``.
STORE_DIR_ENV = "GRFT_MODEL_DIR"


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a built-in entry (a classifier backbone or a causal LM), written into the
    store on first use."""
    return name in BUILTIN_MODELS or name in BUILTIN_CAUSAL_LMS


def default_store_dir(store_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the store folder: ``store_dir`` when given, else ``$GRFT_MODEL_DIR``, else
    ``~/.cache/grft/models`` (``USER_STORE_DIR``).

    This is the only place the library reads ``GRFT_MODEL_DIR``; code that has its own configuration
    passes the folder instead.
    """
    if store_dir is not None:
        return Path(store_dir).expanduser()
    env = os.environ.get(STORE_DIR_ENV)
    return Path(env).expanduser() if env else USER_STORE_DIR


class ModelRegistry:
    """Names to base models in a local store.

    Args:
        store_dir: the store folder; when omitted, ``default_store_dir()`` decides (the environment,
            then ``USER_STORE_DIR``). Created on first write.
    """

    def __init__(self, store_dir: str | os.PathLike[str] | None = None) -> None:
        self.store_dir = default_store_dir(store_dir)

    # -- index ---------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock across processes for read-modify-write of the index and model folders."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with open(self.store_dir / ".lock", "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, ModelSpec]:
        path = self.store_dir / INDEX_FILE
        if not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable model index {path}: {exc}", param=INDEX_FILE) from exc
        specs = {}
        for name, entry in raw.get("models", {}).items():
            spec = ModelSpec.from_dict(entry)
            # The index stores paths relative to the store, so a store folder can be moved or mounted.
            spec.weights = str(self.store_dir / spec.weights)
            spec.config_dir = str(self.store_dir / spec.config_dir) if spec.config_dir else None
            specs[name] = spec
        return specs

    def _write_index(self, specs: Mapping[str, ModelSpec]) -> None:
        models = {}
        for name, spec in specs.items():
            entry = spec.to_dict()
            entry["weights"] = Path(spec.weights).relative_to(self.store_dir).as_posix()
            if spec.config_dir:
                entry["config_dir"] = Path(spec.config_dir).relative_to(self.store_dir).as_posix()
            models[name] = entry
        save_json_atomic({"format_version": 1, "models": models}, self.store_dir / INDEX_FILE)

    def _builtin(self, name: str) -> ModelSpec:
        """The built-in entry, written into the store first if it is not there (or is incomplete)."""
        spec = self._read_index().get(name)
        if spec is not None and Path(spec.weights).is_file():
            return spec
        with self._locked():
            index = self._read_index()
            spec = index.get(name)
            if spec is None or not Path(spec.weights).is_file():
                build = BUILTIN_MODELS.get(name) or BUILTIN_CAUSAL_LMS[name]
                spec = build(self.store_dir / name)
                index[name] = spec
                self._write_index(index)
            return spec

    # -- public API ----------------------------------------------------------------------------------

    def list(self) -> list[ModelSpec]:
        """Every entry: the built-ins (materialised if needed) in fixed order, then added ones by name.

        Built-in causal LMs not converted yet are listed as they will be (no fingerprint): converting
        one takes about a minute, so it waits for the first ``get``.
        """
        builtins = [self._builtin(name) for name in BUILTIN_MODELS]
        index = self._read_index()
        for name in BUILTIN_CAUSAL_LMS:
            stored = index.get(name)
            complete = stored is not None and Path(stored.weights).is_file()
            pending = pending_builtin_spec(name, self.store_dir / name)
            builtins.append(stored if stored is not None and complete else pending)
        added = [spec for name, spec in sorted(index.items()) if not is_builtin(name)]
        return builtins + added

    def get(self, name: str) -> ModelSpec:
        """The entry called ``name``.

        Raises:
            ModelNotFound: unknown name; the message lists the known names.
        """
        if is_builtin(name):
            return self._builtin(name)
        spec = self._read_index().get(name)
        if spec is None:
            known = sorted(set(BUILTIN_MODELS) | set(BUILTIN_CAUSAL_LMS) | set(self._read_index()))
            raise ModelNotFound(f"unknown model {name!r}; known models: {', '.join(known)}", param="model")
        return spec

    def _check_new_name(self, name: str) -> None:
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"model name {name!r} must be 1-64 characters of a-z, 0-9, '.', '_', '-', "
                "starting with a letter or digit",
                param="name",
            )
        if is_builtin(name) or name in self._read_index():
            raise ConfigError(f"a model called {name!r} already exists", param="name")

    def _add(self, name: str, build: Callable[[Path], ModelSpec]) -> ModelSpec:
        """Build a new entry in its folder under the lock; remove the folder if anything fails."""
        self._check_new_name(name)
        with self._locked():
            self._check_new_name(name)
            folder = self.store_dir / name
            shutil.rmtree(folder, ignore_errors=True)  # leftovers of an interrupted add
            try:
                spec = build(folder)
                index = self._read_index()
                index[name] = spec
                self._write_index(index)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return spec

    def add_timm(
        self, name: str, arch: str, weights: Path, *, timm_kwargs: Mapping[str, Any] | None = None
    ) -> ModelSpec:
        """Register a timm architecture with its weights, copied into the store.

        Args:
            name: new registry name (lower-case letters, digits, ``.``, ``_``, ``-``).
            arch: timm architecture name.
            weights: a ``.safetensors`` file; classifier keys in it are dropped.
            timm_kwargs: extra ``timm.create_model`` arguments the weights were trained with.
        Returns:
            The new entry.
        Raises:
            ConfigError: bad or taken name, unknown arch, not a safetensors file, or weights that do not
                load strictly into ``timm.create_model(arch, num_classes=0)`` (the message names the key).
        """
        weights = Path(weights)
        if weights.suffix != ".safetensors":
            raise ConfigError(f"{weights.name}: only .safetensors weights are accepted", param="weights")
        kwargs = dict(timm_kwargs or {})
        try:
            json.dumps(kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"timm_kwargs must be JSON-serialisable: {exc}", param="timm_kwargs") from exc

        def build(folder: Path) -> ModelSpec:
            with torch.random.fork_rng(devices=[]):
                model = create_timm_backbone(arch, kwargs)
            state = fit_timm_state(load_safetensors(weights, param="weights"), model, arch)
            desc = f"{arch} from {weights.name}"
            fields = {"family": "timm", "modality": "image", "arch": arch, "timm_kwargs": kwargs}
            return finish_entry(folder, state, model, name=name, description=desc, **fields)

        return self._add(name, build)

    def add_transformers(self, name: str, folder: Path, weights: Path | None = None) -> ModelSpec:
        """Register a local transformers folder (``config.json`` + tokenizer files), copied into the store.

        Args:
            name: new registry name.
            folder: the source folder.
            weights: a ``.safetensors`` file; ``folder/model.safetensors`` when omitted. Base-model keys or
                task-model keys (``bert.``-prefixed, head dropped) are both accepted.
        Returns:
            The new entry.
        Raises:
            ConfigError: bad or taken name, missing config or tokenizer, a config that needs custom code,
                or weights that do not fit the encoder (the message names the key).
        """
        src = Path(folder)
        weights = Path(weights) if weights is not None else src / WEIGHTS_FILE
        if weights.suffix != ".safetensors":
            raise ConfigError(f"{weights.name}: only .safetensors weights are accepted", param="weights")
        if not (src / "config.json").is_file():
            raise ConfigError(f"{src} has no config.json", param="folder")

        def build(dst: Path) -> ModelSpec:
            copy_file_atomic(src / "config.json", dst / "config.json")
            copy_tokenizer_files(src, dst)
            load_tokenizer(dst)  # refuse a folder whose tokenizer does not load before indexing it
            desc = f"transformers model from {src.name}"
            return transformers_entry(dst, weights, name=name, description=desc)

        return self._add(name, build)

    def load(self, name: str, num_labels: int, *, seed: int = 0) -> tuple[Classifier, ModelSpec]:
        """Build the backbone, load its stored weights strictly and add a new seeded head.

        Args:
            name: registry name.
            num_labels: number of classes of the new head.
            seed: seed of the head's initialisation (same seed, same head). The global RNG is untouched.
        Returns:
            ``(classifier, spec)``: an fp32 classifier in eval mode, and the entry it came from.
        Raises:
            ModelNotFound: unknown name.
            FingerprintMismatch: the stored weights no longer hash to the recorded fingerprint.
            ConfigError: bad ``num_labels``, or weights that do not fit the architecture.
        """
        spec = self.get(name)
        if spec.kind == CAUSAL_LM:
            raise ConfigError(
                f"{name!r} is a causal language model: load it with load_causal_lm", param="model"
            )
        state = load_safetensors(Path(spec.weights), param="weights")
        actual = fingerprint_state_dict(state)
        if actual != spec.fingerprint:
            raise FingerprintMismatch(
                f"stored weights of {name!r} hash to {actual}, the registry recorded {spec.fingerprint}",
                param=name,
            )
        with torch.random.fork_rng(devices=[]):
            if spec.family == "timm":
                backbone = create_timm_backbone(spec.arch or "", spec.timm_kwargs)
            else:
                backbone = create_transformers_backbone(Path(spec.config_dir or ""))
        load_backbone_state(backbone, state)
        model = Classifier(
            backbone,
            modality=spec.modality,
            num_labels=num_labels,
            seed=seed,
            num_features=feature_dim(backbone, spec.modality),
        )
        return model.float().eval(), spec

    def add_causal_lm(self, name: str, source: Path) -> ModelSpec:
        """Register a causal language model from a ``.gguf`` file or a Hugging Face folder.

        The model is converted into the store once (fp32 safetensors, config and tokenizer with its
        chat template; see ``grft_core.models.causal``), so later loads are quick.

        Args:
            name: new registry name.
            source: a ``.gguf`` file of any decoder family transformers reads (LLaMA, Qwen2, Gemma 3,
                ...), or a folder with ``config.json``, safetensors weights and tokenizer files.
        Returns:
            The new entry (kind ``causal_lm``).
        Raises:
            ConfigError: bad or taken name, or a source that is not a causal LM transformers loads
                offline (the message says why).
        """
        source = Path(source)

        def build(folder: Path) -> ModelSpec:
            return build_causal_lm_entry(source, folder, name=name)

        return self._add(name, build)

    def load_causal_lm(
        self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[nn.Module, Any, ModelSpec]:
        """Load a causal language model and its tokenizer (converting a built-in on first use).

        Args:
            name: registry name of a ``causal_lm`` entry (e.g. ``smollm2-135m-instruct``).
            device: where the model goes.
            dtype: parameter dtype (stored weights are fp32).
        Returns:
            ``(model, tokenizer, spec)``: the transformers ``*ForCausalLM`` in eval mode with the stored
            weights, its tokenizer (chat template included), and the entry.
        Raises:
            ModelNotFound: unknown name.
            ConfigError: the entry is not a causal LM, or its files do not load.
            FingerprintMismatch: the stored weights no longer hash to the recorded fingerprint.
        """
        spec = self.get(name)
        model, tokenizer = load_causal_lm_spec(spec, device=device, dtype=dtype)
        return model, tokenizer, spec

    def remove(self, name: str) -> None:
        """Delete an added entry and its files.

        Raises:
            ConfigError: ``name`` is a built-in (those always exist).
            ModelNotFound: unknown name.
        """
        if is_builtin(name):
            raise ConfigError(f"{name!r} is a built-in model and cannot be removed", param="name")
        with self._locked():
            index = self._read_index()
            if name not in index:
                self.get(name)  # raises ModelNotFound with the known names
            del index[name]
            self._write_index(index)
            shutil.rmtree(self.store_dir / name, ignore_errors=True)
