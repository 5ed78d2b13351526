"""Errors the daemon reports to clients; each carries its wire ErrorCode."""

from fetchml.protocol.enums import ErrorCode


class ServerError(Exception):
    code: ErrorCode = ErrorCode.UNKNOWN_ERROR

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(ServerError):
    code = ErrorCode.INVALID_REQUEST


class AuthenticationFailed(ServerError):
    code = ErrorCode.AUTHENTICATION_FAILED


class PermissionDenied(ServerError):
    code = ErrorCode.PERMISSION_DENIED


class NotFound(ServerError):
    code = ErrorCode.RESOURCE_NOT_FOUND


class AlreadyExists(ServerError):
    code = ErrorCode.RESOURCE_ALREADY_EXISTS


class Overloaded(ServerError):
    code = ErrorCode.SERVER_OVERLOADED


class DatabaseError(ServerError):
    code = ErrorCode.DATABASE_ERROR


class StorageFault(ServerError):
    code = ErrorCode.STORAGE_ERROR


class JobNotFound(ServerError):
    code = ErrorCode.JOB_NOT_FOUND


class JobCancelled(ServerError):
    code = ErrorCode.JOB_CANCELLED


class DiskFull(ServerError):
    code = ErrorCode.DISK_FULL


class ServiceUnavailable(ServerError):
    """The cluster's Redis is unreachable: what needs it waits until it is back."""

    code = ErrorCode.SERVICE_UNAVAILABLE
