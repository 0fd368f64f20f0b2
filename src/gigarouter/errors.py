"""One error tree for the whole service, and one table that maps it to HTTP.

Every failure a client can cause or observe is a ``GigarouterError``. The API
layer turns it into the OpenAI error body ``{"error": {message, type, param,
code}}`` with the status below; anything else becomes a 500 that carries the
request id and no internals.
"""

from __future__ import annotations


class GigarouterError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


class InvalidRequest(GigarouterError):
    """The request is malformed or asks for something impossible (400)."""

    status = 400
    type = "invalid_request_error"


class InputTooLong(InvalidRequest):
    """An input exceeds the model's context and the request said truncate=none."""

    code = "context_length_exceeded"


class Unauthorized(GigarouterError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class InsufficientCredit(GigarouterError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class Forbidden(GigarouterError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class NotFound(GigarouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(GigarouterError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(GigarouterError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


def retry_after_header(seconds: float) -> str:
    """Retry-After as HTTP wants it: whole seconds, rounded up, at least 1."""
    return str(max(1, int(seconds + 0.999)))


class RetryLater(GigarouterError):
    """A refusal that says when to come back: every 429 and every 503 carries Retry-After."""

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.headers.setdefault("Retry-After", retry_after_header(retry_after))


class RateLimited(RetryLater):
    """Too many requests for a key, or the scheduler's queue is full (429)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(RateLimited):
    """A model's queue already holds more work than ``max_queue_wait_ms`` of device time (or its token bound)."""

    code = "queue_full"


class NotReady(RetryLater):
    """The model is loading, or the server is shutting down (503 + Retry-After)."""

    status = 503
    type = "server_error"
    code = "not_ready"


class ModelLoadError(RetryLater):
    """Weights could not be found, downloaded or read (raised at start-up or by the CLI)."""

    status = 503
    type = "server_error"
    code = "model_unavailable"


class Overloaded(RetryLater):
    """The device or a provider cannot take this request now; retrying later may work (503 + Retry-After)."""

    status = 503
    type = "server_error"
    code = "overloaded"


class DeadlineExceeded(Overloaded):
    """The request's deadline (``request_timeout_s``, or less if the client asked) passed before its
    vectors were ready: its work left the queue and its reservation was refunded."""

    code = "timeout"


class DeviceHung(Overloaded):
    """The scheduler's watchdog found a batch running far past its predicted time: the device is not
    answering, so queued and new work fail at once instead of waiting behind it."""

    code = "device_hung"


class EngineOutOfMemory(Overloaded):
    """The device ran out of memory for a batch even after it was split down to single sequences."""

    code = "device_out_of_memory"


class ProviderUnavailable(Overloaded):
    """A provider could not answer: connection refused or reset, timeout, an upstream 5xx or 429.

    The router moves such a request to the next allowed provider; the client sees this
    only when none is left.
    """

    code = "provider_unavailable"


class NoProviderAvailable(Overloaded):
    """Every provider the request allows is down or serves other vectors (mismatch)."""

    code = "no_provider_available"


class ProviderRejected(InvalidRequest):
    """An upstream refused the request as invalid (its 4xx other than 429): not retried elsewhere."""

    code = "provider_rejected"


def shown(value: object, limit: int = 64) -> str:
    """A client's value as it may appear in an error message: a short string, never a repr of a structure
    (repr of JSON nested 1000 deep raises RecursionError; an 8 MiB name would come back whole)."""
    if not isinstance(value, str):
        return f"a JSON {type(value).__name__}".replace("NoneType", "null")
    return value if len(value) <= limit else f"{value[:limit]}..."


def is_retryable(exc: BaseException) -> bool:
    """May this failure be retried on another provider? Rate limits and 5xx yes, the client's 4xx no."""
    status = getattr(exc, "status", 500)
    return isinstance(exc, GigarouterError) and (status == 429 or status >= 500)
