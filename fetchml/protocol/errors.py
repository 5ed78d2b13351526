"""Every failure of the codec is a ProtocolError carrying its wire ErrorCode."""

from .enums import ErrorCode


class ProtocolError(Exception):
    """Base of all codec errors. `code` is what the peer is told."""

    code: ErrorCode = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedRequest(ProtocolError):
    """A request that cannot be decoded or breaks a field rule."""


class MalformedResponse(ProtocolError):
    """A response packet that cannot be decoded."""


class MalformedRecord(ProtocolError):
    """A metrics.bin record or meta.bin file that cannot be decoded."""

    code = ErrorCode.STORAGE_ERROR
