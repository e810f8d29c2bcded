"""The service's errors beyond the library's, each with its HTTP status and stable ``code``.

GrftError (grft_core.errors)          400  grft_error
├── ConfigError / DatasetRejected     422  invalid_config / invalid_dataset
├── ModelNotFound                     404  model_not_found
├── AdapterError → FingerprintMismatch 422 / 409
├── NotFound                          404  not_found
├── Unauthorized                      401  unauthorized
│   ├── ApiKeyRevoked                 401  api_key_revoked
│   └── ApiKeyExpired                 401  api_key_expired
├── Forbidden                         403  forbidden       (allowed to no one, e.g. deleting a base model)
├── Conflict                          409  conflict
│   └── JobNotFinished                409  job_not_finished
├── PayloadTooLarge                   413  payload_too_large
├── QuotaExceeded                     429  quota_exceeded   (a standing limit: active jobs, stored jobs)
│   └── RateLimited                   429  rate_limited     (a limit per unit of time or in flight)
└── BadRequest                        400  bad_request

``api.errors`` answers the 422s as 400 and adds OpenAI's ``type`` (``invalid_request_error``, …).
Both 429s may carry ``retry_after`` (seconds), rendered as a ``Retry-After`` header.

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


class ApiKeyRevoked(Unauthorized):
    """The API key was revoked (``grft keys revoke``)."""

    code = "api_key_revoked"


class ApiKeyExpired(Unauthorized):
    """The API key is past its ``expires_at``."""

    code = "api_key_expired"


class Forbidden(GrftError):
    """The caller may not do this to this object (nobody may)."""

    status_code = 403
    code = "forbidden"


class Conflict(GrftError):
    status_code = 409
    code = "conflict"


class JobNotFinished(Conflict):
    """The job has not reached a final state (succeeded, failed, cancelled)."""

    code = "job_not_finished"


class PayloadTooLarge(GrftError):
    status_code = 413
    code = "payload_too_large"


class QuotaExceeded(GrftError):
    """A standing limit of the organization is reached (jobs queued or running, jobs stored)."""

    status_code = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class RateLimited(QuotaExceeded):
    """Too many requests per minute, or in progress at once: retry after ``Retry-After`` seconds."""

    code = "rate_limited"


class BadRequest(GrftError):
    status_code = 400
    code = "bad_request"
