"""metrics.bin records and meta.bin, byte-compatible with fetch_ml's Go manager.

A record is `[timestamp:u64][step:u32][value:f64][name:str8]`, big-endian, with
no header or padding. A file is its valid prefix (see `scan`) followed by a
remainder that readers never trust.
"""

import struct
from dataclasses import dataclass
from typing import NamedTuple

from .errors import MalformedRecord

RECORD_HEAD = struct.Struct(">QIdB")
"""timestamp, step, value, name length: the fixed 21 bytes before the name."""
_SCAN_HEAD = struct.Struct(">Q12xB")
_META_HEAD = struct.Struct(">Bq")

RECORD_MIN = RECORD_HEAD.size
RECORD_MAX = RECORD_HEAD.size + 255
MIN_TIMESTAMP = 946684800  # 2000-01-01
MAX_TIMESTAMP = 4294967296  # 2106-02-07, exclusive
META_VERSION = 1


class MetricRecord(NamedTuple):
    timestamp: int
    step: int
    value: float
    name: str


class ScanResult(NamedTuple):
    end: int
    """Offset just past the valid prefix."""
    records: int
    """Records in the valid prefix."""
    incomplete: bool
    """The walk reached the end of the buffer, or a record it cuts that more bytes could
    complete: more bytes may extend the valid prefix."""


def encode_record(timestamp: int, step: int, value: float, name: bytes) -> bytes:
    """One record; `name` is the already-encoded name (1..255 bytes, checked by the caller)."""
    return RECORD_HEAD.pack(timestamp, step, value, len(name)) + name


def scan(buf: bytes | bytearray | memoryview, start: int = 0) -> ScanResult:
    """Walk records from `start` by PROTOCOL.md's validity rule.

    A record is valid when complete, its timestamp plausible, its name free of
    0x00, and, when its name is empty, a valid record with a non-empty name
    follows it. So the prefix never ends on an empty-name record.
    """
    data = bytes(buf) if not isinstance(buf, bytes) else buf
    size = len(data)
    unpack = _SCAN_HEAD.unpack_from
    find = data.find
    pos = end = start
    count = empties = 0
    while True:
        if pos + RECORD_MIN > size:
            # Cut inside the head: incomplete only if some completion has a plausible timestamp.
            head = data[pos : pos + 8]
            low = int.from_bytes(head.ljust(8, b"\0"))
            high = int.from_bytes(head.ljust(8, b"\xff"))
            plausible = high >= MIN_TIMESTAMP and low < MAX_TIMESTAMP
            return ScanResult(end, count, pos == size or plausible)
        timestamp, length = unpack(data, pos)
        stop = pos + RECORD_MIN + length
        if not MIN_TIMESTAMP <= timestamp < MAX_TIMESTAMP:
            return ScanResult(end, count, False)
        if stop > size:
            return ScanResult(end, count, find(b"\0", pos + RECORD_MIN, size) < 0)
        if length == 0:
            empties += 1
        elif find(b"\0", pos + RECORD_MIN, stop) >= 0:
            return ScanResult(end, count, False)
        else:
            count += empties + 1
            empties = 0
            end = stop
        pos = stop


def iter_records(
    buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None
) -> "list[tuple[int, MetricRecord]]":
    """Decode the records of a valid prefix `buf[start:end]` as (offset, record) pairs."""
    data = bytes(buf) if not isinstance(buf, bytes) else buf
    stop = len(data) if end is None else end
    if not 0 <= start <= stop <= len(data):
        raise MalformedRecord(f"range {start}:{stop} is outside the {len(data)}-byte buffer")
    unpack = RECORD_HEAD.unpack_from
    out: list[tuple[int, MetricRecord]] = []
    pos = start
    while pos + RECORD_MIN <= stop:
        timestamp, step, value, length = unpack(data, pos)
        name_end = pos + RECORD_MIN + length
        if name_end > stop:
            raise MalformedRecord(f"record at offset {pos} runs past the end ({stop})")
        name = data[pos + RECORD_MIN : name_end].decode("utf-8", "replace")
        out.append((pos, MetricRecord(timestamp, step, value, name)))
        pos = name_end
    if pos != stop:
        raise MalformedRecord(f"{stop - pos} stray bytes at offset {pos}")
    return out


def decode_records(buf: bytes | bytearray | memoryview) -> list[MetricRecord]:
    """Decode a buffer holding whole records only."""
    return [record for _, record in iter_records(buf)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """meta.bin: who made an experiment and when."""

    commit_id: str
    timestamp: int
    job_name: str = ""
    user: str = ""

    def __post_init__(self) -> None:
        for field in ("commit_id", "job_name", "user"):
            if len(getattr(self, field).encode()) > 255:
                raise MalformedRecord(f"metadata {field} longer than 255 bytes")
        if not -(2**63) <= self.timestamp < 2**63:
            raise MalformedRecord("metadata timestamp out of int64 range")


def encode_metadata(meta: Metadata) -> bytes:
    parts = [_META_HEAD.pack(META_VERSION, meta.timestamp)]
    for text in (meta.commit_id, meta.job_name, meta.user):
        raw = text.encode()
        parts.append(bytes((len(raw),)) + raw)
    return b"".join(parts)


def decode_metadata(data: bytes) -> Metadata:
    """Parse meta.bin; every defect is a MalformedRecord, never another exception."""
    if len(data) < 10:
        raise MalformedRecord("metadata file too short")
    version, timestamp = _META_HEAD.unpack_from(data)
    if version != META_VERSION:
        raise MalformedRecord("unsupported metadata version")
    fields: list[str] = []
    pos = _META_HEAD.size
    while len(fields) < 3 and pos < len(data):
        length = data[pos]
        if pos + 1 + length > len(data):
            raise MalformedRecord("metadata string runs past the end of the file")
        fields.append(data[pos + 1 : pos + 1 + length].decode("utf-8", "replace"))
        pos += 1 + length
    fields += [""] * (3 - len(fields))
    return Metadata(commit_id=fields[0], timestamp=timestamp, job_name=fields[1], user=fields[2])
