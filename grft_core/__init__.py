"""grft_core: GRFT fine-tuning as a library.

Train only the top-k rows (or columns) of each weight matrix, chosen by squared gradients, with an L2
pull toward the pre-trained weights (arXiv 2507.00016), without ever forming dense weight gradients.

The public face is below; the parts live in subpackages named for what they hold: ``method`` (options,
selection, layers, trainer, baselines), ``data`` (URIs, formats, preprocessing, sample sets), ``models``
(registry, classifier, serialization), ``adapters`` (format, PEFT export) and ``serving``. The package
imports no web, database or queue code. Names load on first use, so ``import grft_core`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "GRFTConfig": "grft_core.method.config",
    "GrftOptions": "grft_core.method.options",
    "Selection": "grft_core.method.selection",
    "fit": "grft_core.method.trainer",
    "TrainResult": "grft_core.method.trainer",
    "LabeledData": "grft_core.data.loading",
    "load_dataset": "grft_core.data.loading",
    "load_train_val": "grft_core.data.loading",
    "make_preprocessor": "grft_core.data.preprocess",
    "ModelRegistry": "grft_core.models.registry",
    "ModelSpec": "grft_core.models.registry",
    "Adapter": "grft_core.adapters.format",
    "load_adapter": "grft_core.adapters.format",
    "save_adapter": "grft_core.adapters.format",
    "export_peft_lora": "grft_core.adapters.peft",
    "ServingEngine": "grft_core.serving",
    "train_to_folder": "grft_core.pipeline",
    "evaluate_adapter": "grft_core.pipeline",
    "export_peft": "grft_core.pipeline",
    "GrftError": "grft_core.errors",
    "ConfigError": "grft_core.errors",
    "DatasetRejected": "grft_core.errors",
    "AdapterError": "grft_core.errors",
    "ModelNotFound": "grft_core.errors",
    "TrainingInterrupted": "grft_core.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # ``X as X``: names re-exported for type checkers
    from grft_core.adapters.format import (
        Adapter as Adapter,
    )
    from grft_core.adapters.format import (
        load_adapter as load_adapter,
    )
    from grft_core.adapters.format import (
        save_adapter as save_adapter,
    )
    from grft_core.adapters.peft import (
        export_peft_lora as export_peft_lora,
    )
    from grft_core.data.loading import (
        LabeledData as LabeledData,
    )
    from grft_core.data.loading import (
        load_dataset as load_dataset,
    )
    from grft_core.data.loading import (
        load_train_val as load_train_val,
    )
    from grft_core.data.preprocess import (
        make_preprocessor as make_preprocessor,
    )
    from grft_core.errors import (
        AdapterError as AdapterError,
    )
    from grft_core.errors import (
        ConfigError as ConfigError,
    )
    from grft_core.errors import (
        DatasetRejected as DatasetRejected,
    )
    from grft_core.errors import (
        GrftError as GrftError,
    )
    from grft_core.errors import (
        ModelNotFound as ModelNotFound,
    )
    from grft_core.errors import (
        TrainingInterrupted as TrainingInterrupted,
    )
    from grft_core.method.config import (
        GRFTConfig as GRFTConfig,
    )
    from grft_core.method.options import (
        GrftOptions as GrftOptions,
    )
    from grft_core.method.selection import (
        Selection as Selection,
    )
    from grft_core.method.trainer import (
        TrainResult as TrainResult,
    )
    from grft_core.method.trainer import (
        fit as fit,
    )
    from grft_core.models.registry import (
        ModelRegistry as ModelRegistry,
    )
    from grft_core.models.registry import (
        ModelSpec as ModelSpec,
    )
    from grft_core.pipeline import (
        evaluate_adapter as evaluate_adapter,
    )
    from grft_core.pipeline import (
        export_peft as export_peft,
    )
    from grft_core.pipeline import (
        train_to_folder as train_to_folder,
    )
    from grft_core.serving import (
        ServingEngine as ServingEngine,
    )


def __getattr__(name: str) -> Any:
    """Import a public name on first use (torch, timm and transformers load only when needed)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grft_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
