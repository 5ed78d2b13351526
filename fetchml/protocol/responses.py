"""Responses: `[packet_type:u8][timestamp:u64][body]`, one frozen dataclass per type."""

import struct
from dataclasses import dataclass

from .enums import ErrorCode, LogLevel, PacketType
from .errors import MalformedResponse

HEADER = struct.Struct(">BQ")
_ERROR_CODE = struct.Struct(">B")
_PROGRESS = struct.Struct(">BII")


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128, as Go's binary.PutUvarint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    """Return (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise MalformedResponse("uvarint runs past the end of the packet")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise MalformedResponse("uvarint longer than 64 bits")


def _vbytes(raw: bytes) -> bytes:
    return encode_uvarint(len(raw)) + raw


def _read_vbytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = decode_uvarint(data, pos)
    if pos + length > len(data):
        raise MalformedResponse(f"string of {length} bytes runs past the end of the packet")
    return data[pos : pos + length], pos + length


def _read_vstr(data: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _read_vbytes(data, pos)
    try:
        return raw.decode(), pos
    except UnicodeDecodeError:
        raise MalformedResponse("invalid UTF-8 in a response string") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Success:
    timestamp: int
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    timestamp: int
    code: ErrorCode
    message: str
    details: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    timestamp: int
    progress_type: int
    value: int
    total: int
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    timestamp: int
    status_json: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    timestamp: int
    data_type: str
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Log:
    timestamp: int
    level: LogLevel
    message: str


Response = Success | Error | Progress | StatusReport | Data | Log


def encode_response(response: Response) -> bytes:
    match response:
        case Success():
            return HEADER.pack(PacketType.SUCCESS, response.timestamp) + _vbytes(
                response.message.encode()
            )
        case Error():
            return (
                HEADER.pack(PacketType.ERROR, response.timestamp)
                + _ERROR_CODE.pack(response.code)
                + _vbytes(response.message.encode())
                + _vbytes(response.details.encode())
            )
        case Progress():
            return (
                HEADER.pack(PacketType.PROGRESS, response.timestamp)
                + _PROGRESS.pack(response.progress_type, response.value, response.total)
                + _vbytes(response.message.encode())
            )
        case StatusReport():
            return HEADER.pack(PacketType.STATUS, response.timestamp) + _vbytes(
                response.status_json.encode()
            )
        case Data():
            return (
                HEADER.pack(PacketType.DATA, response.timestamp)
                + _vbytes(response.data_type.encode())
                + _vbytes(response.payload)
            )
        case Log():
            return (
                HEADER.pack(PacketType.LOG, response.timestamp)
                + _ERROR_CODE.pack(response.level)
                + _vbytes(response.message.encode())
            )


def decode_response(packet: bytes) -> Response:
    """Decode one response packet; every defect raises MalformedResponse."""
    if len(packet) < HEADER.size:
        raise MalformedResponse(f"packet too short: {len(packet)} bytes, need {HEADER.size}")
    raw_type, timestamp = HEADER.unpack_from(packet)
    pos = HEADER.size
    try:
        packet_type = PacketType(raw_type)
        match packet_type:
            case PacketType.SUCCESS:
                message, pos = _read_vstr(packet, pos)
                response: Response = Success(timestamp=timestamp, message=message)
            case PacketType.ERROR:
                (code,) = _ERROR_CODE.unpack_from(packet, pos)
                message, pos = _read_vstr(packet, pos + 1)
                details, pos = _read_vstr(packet, pos)
                response = Error(
                    timestamp=timestamp, code=ErrorCode(code), message=message, details=details
                )
            case PacketType.PROGRESS:
                kind, value, total = _PROGRESS.unpack_from(packet, pos)
                message, pos = _read_vstr(packet, pos + _PROGRESS.size)
                response = Progress(
                    timestamp=timestamp,
                    progress_type=kind,
                    value=value,
                    total=total,
                    message=message,
                )
            case PacketType.STATUS:
                text, pos = _read_vstr(packet, pos)
                response = StatusReport(timestamp=timestamp, status_json=text)
            case PacketType.DATA:
                data_type, pos = _read_vstr(packet, pos)
                payload, pos = _read_vbytes(packet, pos)
                response = Data(timestamp=timestamp, data_type=data_type, payload=payload)
            case PacketType.LOG:
                (level,) = _ERROR_CODE.unpack_from(packet, pos)
                message, pos = _read_vstr(packet, pos + 1)
                response = Log(timestamp=timestamp, level=LogLevel(level), message=message)
    except struct.error:
        raise MalformedResponse(
            f"{packet_type.name} packet too short: {len(packet)} bytes"
        ) from None
    except ValueError as exc:
        raise MalformedResponse(f"invalid enum value in response: {exc}") from None
    if pos != len(packet):
        raise MalformedResponse(f"{len(packet) - pos} trailing bytes after a {packet_type.name}")
    return response
