"""One error tree for the library (and, later, the service that renders it as HTTP).

    GrftError                      400  grft_error
    ├── ConfigError                422  invalid_config      a config field is out of bounds
    ├── DatasetRejected            422  invalid_dataset     a dataset cannot be read or is unusable
    ├── ModelNotFound              404  model_not_found     a name missing from the registry
    ├── AdapterError               422  invalid_adapter     an adapter folder is malformed
    │   └── FingerprintMismatch    409  fingerprint_mismatch  adapter trained on other weights
    └── TrainingInterrupted        409  interrupted         a callback asked the trainer to stop

Every error carries ``param``: the name of the field, file or line at fault, when there is one, so
that a CLI can print one clear line and an API can fill ``error.param``.
"""

from __future__ import annotations


class GrftError(Exception):
    """Base of every error the library raises on purpose."""

    status_code: int = 400
    code: str = "grft_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class ConfigError(GrftError):
    """A configuration value is missing, of the wrong type or out of bounds."""

    status_code = 422
    code = "invalid_config"


class DatasetRejected(GrftError):
    """A dataset cannot be read, or its content cannot be trained on."""

    status_code = 422
    code = "invalid_dataset"


class ModelNotFound(GrftError):
    """A model name that the registry does not know."""

    status_code = 404
    code = "model_not_found"


class AdapterError(GrftError):
    """An adapter folder that is missing files or whose tensors do not fit the model."""

    status_code = 422
    code = "invalid_adapter"


class FingerprintMismatch(AdapterError):
    """The adapter was trained on base weights other than the ones offered."""

    status_code = 409
    code = "fingerprint_mismatch"


class TrainingInterrupted(GrftError):
    """Raised out of the training loop when a callback asks it to stop (cancel, crash simulation)."""

    status_code = 409
    code = "interrupted"
