"""Client errors: every failure is a FetchmlError carrying a protocol ErrorCode.

Errors the daemon sends become the subclass registered for their code, with
the server's message (and details) kept verbatim. Transport failures are
`FetchmlConnectionError`s, which are also builtin `ConnectionError`s.
"""

from typing import ClassVar

from fetchml.protocol.enums import ErrorCode


class FetchmlError(Exception):
    """Base of every client error. `code` is the protocol ErrorCode, `message` the text."""

    default_code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN_ERROR

    def __init__(self, message: str, details: str = "", code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.code: ErrorCode = self.default_code if code is None else code

    def __str__(self) -> str:
        return self.message


class InvalidRequest(FetchmlError, ValueError):
    """INVALID_REQUEST from the server, or an argument the client refuses to send."""

    default_code = ErrorCode.INVALID_REQUEST


class AuthenticationFailed(FetchmlError):
    default_code = ErrorCode.AUTHENTICATION_FAILED


class PermissionDenied(FetchmlError):
    default_code = ErrorCode.PERMISSION_DENIED


class NotFound(FetchmlError):
    """RESOURCE_NOT_FOUND: no such experiment."""

    default_code = ErrorCode.RESOURCE_NOT_FOUND


class AlreadyExists(FetchmlError):
    default_code = ErrorCode.RESOURCE_ALREADY_EXISTS


class ServerOverloaded(FetchmlError):
    """SERVER_OVERLOADED, e.g. the control-request rate limit."""

    default_code = ErrorCode.SERVER_OVERLOADED


class StorageError(FetchmlError):
    """STORAGE_ERROR, DATABASE_ERROR, DISK_FULL and OUT_OF_MEMORY: the server could not store."""

    default_code = ErrorCode.STORAGE_ERROR


class JobNotFound(FetchmlError):
    default_code = ErrorCode.JOB_NOT_FOUND


class JobError(FetchmlError):
    """The other job errors (already running, failed to start, execution failed, cancelled)."""

    default_code = ErrorCode.JOB_EXECUTION_FAILED


class ConfigurationError(FetchmlError):
    """No usable URL or API key, or an unreadable ~/.ml/config.toml."""

    default_code = ErrorCode.INVALID_CONFIGURATION


class FetchmlConnectionError(FetchmlError, ConnectionError):
    """Base of transport failures (code NETWORK_ERROR)."""

    default_code = ErrorCode.NETWORK_ERROR


class ConnectFailed(FetchmlConnectionError):
    """The WebSocket could not be opened (refused, timed out, HTTP error)."""


class ConnectionLost(FetchmlConnectionError):
    """The connection closed while requests were pending, or before this request."""


class ProtocolViolation(FetchmlConnectionError):
    """The server sent something the protocol does not allow; the connection is dropped."""


class MetricsRejected(FetchmlError):
    """Points that will never be stored: refused by the daemon or not encodable. Never resent.

    `count` is how many points; `reasons` maps each distinct message to its point count.
    """

    def __init__(self, reasons: dict[str, int], code: ErrorCode) -> None:
        self.count = sum(reasons.values())
        self.reasons = dict(reasons)
        parts = "; ".join(f"{why} ({_points(n, '')})" for why, n in reasons.items())
        super().__init__(f"{_points(self.count)} rejected: {parts}", code=code)


class DeliveryTimeout(FetchmlError, TimeoutError):
    """flush() or close() ran out of time with `undelivered` points not acknowledged.

    `rejected` holds the points rejected meanwhile, if any.
    """

    default_code = ErrorCode.TIMEOUT

    def __init__(
        self,
        undelivered: int,
        timeout: float,
        last_error: FetchmlError | None = None,
        rejected: MetricsRejected | None = None,
    ) -> None:
        self.undelivered = undelivered
        self.rejected = rejected
        message = f"{_points(undelivered)} not delivered within {timeout:g} s"
        if last_error is not None:
            message += f" (last error: {last_error})"
        if rejected is not None:
            message += f"; {rejected}"
        super().__init__(message)


_BY_CODE: dict[ErrorCode, type[FetchmlError]] = {
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.AUTHENTICATION_FAILED: AuthenticationFailed,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.RESOURCE_NOT_FOUND: NotFound,
    ErrorCode.RESOURCE_ALREADY_EXISTS: AlreadyExists,
    ErrorCode.SERVER_OVERLOADED: ServerOverloaded,
    ErrorCode.SERVICE_UNAVAILABLE: ServerOverloaded,
    ErrorCode.TIMEOUT: ServerOverloaded,
    ErrorCode.DATABASE_ERROR: StorageError,
    ErrorCode.STORAGE_ERROR: StorageError,
    ErrorCode.DISK_FULL: StorageError,
    ErrorCode.OUT_OF_MEMORY: StorageError,
    ErrorCode.NETWORK_ERROR: FetchmlConnectionError,
    ErrorCode.JOB_NOT_FOUND: JobNotFound,
    ErrorCode.JOB_ALREADY_RUNNING: JobError,
    ErrorCode.JOB_FAILED_TO_START: JobError,
    ErrorCode.JOB_EXECUTION_FAILED: JobError,
    ErrorCode.JOB_CANCELLED: JobError,
    ErrorCode.INVALID_CONFIGURATION: ConfigurationError,
}

RETRYABLE = frozenset(
    {
        ErrorCode.SERVER_OVERLOADED,
        ErrorCode.SERVICE_UNAVAILABLE,
        ErrorCode.TIMEOUT,
        ErrorCode.STORAGE_ERROR,
        ErrorCode.DISK_FULL,
        ErrorCode.OUT_OF_MEMORY,
        ErrorCode.DATABASE_ERROR,
        ErrorCode.NETWORK_ERROR,
    }
)
"""Codes after which the same request may succeed later (used by MetricLogger)."""


def _points(n: int, kind: str = "metric ") -> str:
    return f"{n} {kind}point" if n == 1 else f"{n} {kind}points"


def error_from(code: ErrorCode, message: str, details: str = "") -> FetchmlError:
    """The exception for an ERROR packet: its code's class, the server's words."""
    cls = _BY_CODE.get(code, FetchmlError)
    return cls(message or code.name, details, code)
