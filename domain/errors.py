"""The service's errors beyond the library's, each with its HTTP status and stable ``code``.

GrftError (grft_core.errors)          400  grft_error
├── ConfigError / DatasetRejected     422  invalid_config / invalid_dataset
├── ModelNotFound                     404  model_not_found
├── AdapterError → FingerprintMismatch 422 / 409
├── NotFound                          404  not_found
├── Unauthorized                      401  unauthorized
├── Conflict                          409  conflict
├── PayloadTooLarge                   413  payload_too_large
├── QuotaExceeded                     429  rate_limited
└── BadRequest                        400  bad_request

They carry no HTTP machinery: ``api.errors`` renders them, the worker records them as job errors.
"""

from __future__ import annotations

from grft_core.errors import GrftError


class NotFound(GrftError):
    status_code = 404
    code = "not_found"


class Unauthorized(GrftError):
    status_code = 401
    code = "unauthorized"


class Conflict(GrftError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(GrftError):
    status_code = 413
    code = "payload_too_large"


class QuotaExceeded(GrftError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class BadRequest(GrftError):
    status_code = 400
    code = "bad_request"
