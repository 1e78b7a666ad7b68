"""Domain exceptions. The core raises these; app.api.errors maps them to the one JSON envelope."""

from __future__ import annotations


class PeftServeError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationFailed(PeftServeError):
    status_code = 422
    code = "invalid_request"


class NotFound(PeftServeError):
    status_code = 404
    code = "not_found"


class Conflict(PeftServeError):
    status_code = 409
    code = "conflict"


class AdapterUnloadable(PeftServeError):
    """A stored adapter that cannot be served (corrupt, or not fitting its base)."""

    status_code = 409
    code = "adapter_unloadable"

    def __init__(self, message: str, field: str | None = "adapter"):
        super().__init__(message, field)


class Unauthorized(PeftServeError):
    status_code = 401
    code = "unauthorized"


class Forbidden(PeftServeError):
    status_code = 403
    code = "forbidden"


class PayloadTooLarge(PeftServeError):
    status_code = 413
    code = "payload_too_large"


class StoreUnavailable(PeftServeError):
    """The job database or the shared storage did not answer (restarting, unreachable) within the retry budget."""

    status_code = 503
    code = "unavailable"


class TrainingError(Exception):
    """A job failed for a reason worth telling the user (stored as the job's error)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class JobInterrupted(Exception):
    """Training stopped: the job was cancelled, another worker took it over, or this worker is shutting down."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # "cancelled" | "lost" (the lease moved to another worker) | "shutdown"
