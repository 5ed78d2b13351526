"""Every byte of a metric: points on the wire, records in metrics.bin, the DATA
`metrics` payload and packet, and the acknowledgement of a logged batch.

A record is `[timestamp:u64][step:u32][value:f64][name:str8]`, big-endian, with
no header or padding; a point (LOG_METRIC, LOG_METRICS) is a record without its
timestamp, so a record is the daemon's stamp followed by the point's bytes.

Fast and slow paths side by side: `record_tails` and `records_at` take a logging
request apart without building objects (LogMetric / LogMetrics / LogMetricsAt in
requests.py decode it into objects), and `walk` finds record boundaries by their lengths alone for bytes
already known to be records (`scan` applies the validity rule to a file).
"""

import struct
from array import array
from typing import NamedTuple

from .enums import Opcode, PacketType
from .errors import MalformedRecord, MalformedResponse
from .keys import KEY_HASH_SIZE
from .responses import HEADER, Success, encode_response, encode_uvarint
from .rules import COMMIT_SIZE

RECORD_HEAD = struct.Struct(">QIdB")
"""timestamp, step, value, name length: the fixed 21 bytes before the name."""
POINT = struct.Struct(">IdB")
"""step, value, name length: a point's (and a record's after its timestamp) fixed part."""
STAMP = struct.Struct(">Q")
RECORD_STEP = struct.Struct(">8xI")
"""A record's step, read in place."""
_SCAN_HEAD = struct.Struct(">Q12xB")
_PAGE = struct.Struct(">QI")

RECORD_MIN = RECORD_HEAD.size
RECORD_MAX = RECORD_HEAD.size + 255
MIN_TIMESTAMP = 946684800  # 2000-01-01
MAX_TIMESTAMP = 4294967296  # 2106-02-07, exclusive


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


class MetricsPage(NamedTuple):
    next: int
    records: list[MetricRecord]


# -- records ---------------------------------------------------------------------


def encode_record(timestamp: int, step: int, value: float, name: bytes) -> bytes:
    """One record; `name` is the already-encoded name (1..255 bytes, checked by the caller)."""
    return RECORD_HEAD.pack(timestamp, step, value, len(name)) + name


def stamp_records(timestamp: int, tails: list[bytes]) -> bytes:
    """The records of points given as their bytes (see record_tails), stamped with `timestamp`."""
    stamp = STAMP.pack(timestamp)
    return stamp + stamp.join(tails)


def walk(
    data: bytes | bytearray | memoryview,
    out: "list[int] | array[int]",
    base: int = 0,
    pos: int = 0,
    end: int | None = None,
) -> int:
    """The fast path: append `base` + the start of each whole record of `data[pos:end]` to
    `out`; return the offset just past the last one. Lengths only, no checks: for bytes
    known to be records (a valid prefix, a checked payload). A record cut by `end` is left."""
    stop = len(data) if end is None else end
    append = out.append
    head, length_at = RECORD_MIN, RECORD_MIN - 1
    last_head = stop - head
    while pos <= last_head:
        append(base + pos)
        pos += head + data[pos + length_at]
    if pos > stop:  # the last record runs past `stop`: not whole
        pos = out.pop() - base
    return pos


def scan(buf: bytes | bytearray | memoryview, start: int = 0) -> ScanResult:
    """The slow path: walk records from `start` by PROTOCOL.md's validity rule.

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
) -> list[tuple[int, MetricRecord]]:
    """Decode the records of a valid prefix `buf[start:end]` as (offset, record) pairs."""
    data = bytes(buf) if not isinstance(buf, bytes) else buf
    stop = len(data) if end is None else end
    if not 0 <= start <= stop <= len(data):
        raise MalformedRecord(f"range {start}:{stop} is outside the {len(data)}-byte buffer")
    starts: list[int] = []
    pos = walk(data, starts, 0, start, stop)
    if pos + RECORD_MIN <= stop:
        raise MalformedRecord(f"record at offset {pos} runs past the end ({stop})")
    if pos != stop:
        raise MalformedRecord(f"{stop - pos} stray bytes at offset {pos}")
    unpack = RECORD_HEAD.unpack_from
    out: list[tuple[int, MetricRecord]] = []
    for at in starts:
        timestamp, step, value, length = unpack(data, at)
        name = data[at + RECORD_MIN : at + RECORD_MIN + length].decode("utf-8", "replace")
        out.append((at, MetricRecord(timestamp, step, value, name)))
    return out


def max_timestamp(records: bytes) -> int:
    """The latest timestamp among whole records (0 for none)."""
    starts: list[int] = []
    walk(records, starts)
    unpack = STAMP.unpack_from
    return max((unpack(records, at)[0] for at in starts), default=0)


def decode_records(buf: bytes | bytearray | memoryview) -> list[MetricRecord]:
    """Decode a buffer holding whole records only."""
    return [record for _, record in iter_records(buf)]


# -- points: the metric-logging fast path -------------------------------------------

_KEY_END = 1 + KEY_HASH_SIZE
_TAILS_AT = _KEY_END + COMMIT_SIZE


def record_tails(message: bytes) -> tuple[bytes, bytes, list[bytes]] | None:
    """LOG_METRIC and LOG_METRICS taken apart without building objects.

    For a valid request: (key_hash, commit_id, tails), each tail being one metric's
    step, value and name exactly as a metrics.bin record holds them after its
    timestamp (the wire layout is the same). None for any other message, or one
    that breaks a rule: decode_request then says which.
    """
    size = len(message)
    opcode = message[0] if size else 0
    key, commit = message[1 : 1 + KEY_HASH_SIZE], message[1 + KEY_HASH_SIZE : _TAILS_AT]
    if opcode == Opcode.LOG_METRIC:
        if size <= _TAILS_AT + POINT.size:
            return None
        name = message[_TAILS_AT + POINT.size :]
        if message[_TAILS_AT + POINT.size - 1] != len(name) or 0 in name:
            return None
        try:
            name.decode()
        except UnicodeDecodeError:
            return None
        return key, commit, [message[_TAILS_AT:]]
    if opcode != Opcode.LOG_METRICS or size < _TAILS_AT + 2:
        return None
    count = int.from_bytes(message[_TAILS_AT : _TAILS_AT + 2])
    pos = _TAILS_AT + 2
    tails, names = [], []
    for _ in range(count):
        if pos + POINT.size > size:
            return None
        start = pos + POINT.size
        pos = start + message[start - 1]
        tails.append(message[start - POINT.size : pos])
        names.append(message[start:pos])
    if pos != size or not count:
        return None
    # Names: non-empty, no 0x00, valid UTF-8 (joined by 0x00, which no sequence spans).
    joined = b"\0".join(names)
    if joined.count(0) != len(names) - 1 or not all(names):
        return None
    try:
        joined.decode()
    except UnicodeDecodeError:
        return None
    return key, commit, tails


_FIRST_STAMP = STAMP.pack(MIN_TIMESTAMP)
_PAST_STAMP = STAMP.pack(MAX_TIMESTAMP)


def records_at(message: bytes) -> tuple[bytes, bytes, bytes, int, int] | None:
    """LOG_METRICS_AT taken apart without building objects.

    For a valid request: (key_hash, commit_id, records, count, latest): its records
    exactly as metrics.bin holds them, how many, and the latest timestamp among them.
    None for any other message, or one that breaks a rule: decode_request then says which.
    """
    size = len(message)
    if size < _TAILS_AT + 2 or message[0] != Opcode.LOG_METRICS_AT:
        return None
    count = int.from_bytes(message[_TAILS_AT : _TAILS_AT + 2])
    start = pos = _TAILS_AT + 2
    stamps, names = [], []
    for _ in range(count):
        name = pos + RECORD_MIN
        if name > size:
            return None
        stamps.append(message[pos : pos + STAMP.size])
        pos = name + message[name - 1]
        names.append(message[name:pos])
    if pos != size or not count:
        return None
    # Big-endian stamps of one width compare as their numbers do.
    latest = max(stamps)
    if latest >= _PAST_STAMP or min(stamps) < _FIRST_STAMP:
        return None
    joined = b"\0".join(names)
    if joined.count(0) != len(names) - 1 or not all(names):
        return None
    try:
        joined.decode()
    except UnicodeDecodeError:
        return None
    return (
        message[1:_KEY_END],
        message[_KEY_END:_TAILS_AT],
        message[start:],
        count,
        int.from_bytes(latest),
    )


def encode_point(step: int, value: float, name: bytes) -> bytes:
    """One point as LOG_METRIC(S) carry it; `name` already encoded and checked."""
    return POINT.pack(step, value, len(name)) + name


# -- responses: the metrics payload, its DATA packet, acknowledgements -----------------

_DATA_TYPE = encode_uvarint(len(b"metrics")) + b"metrics"


def encode_metrics_payload(next_index: int, count: int, records: bytes) -> bytes:
    """DATA `metrics` payload: `[next:u64][count:u32][records]`."""
    return _PAGE.pack(next_index, count) + records


def decode_metrics_payload(payload: bytes) -> MetricsPage:
    if len(payload) < _PAGE.size:
        raise MalformedResponse(f"metrics payload too short: {len(payload)} bytes")
    next_index, count = _PAGE.unpack_from(payload)
    try:
        records = decode_records(payload[_PAGE.size :])
    except MalformedRecord as exc:
        raise MalformedResponse(f"metrics payload: {exc.message}") from None
    if len(records) != count:
        raise MalformedResponse(f"metrics payload says {count} records, holds {len(records)}")
    return MetricsPage(next_index, records)


def metrics_packet(timestamp: int, next_index: int, count: int, records: bytes) -> bytes:
    """A whole DATA `metrics` response packet, without copying through a Data object."""
    payload = encode_metrics_payload(next_index, count, records)
    return (
        HEADER.pack(PacketType.DATA, timestamp)
        + _DATA_TYPE
        + encode_uvarint(len(payload))
        + payload
    )


def ack_packet(timestamp: int, records: int | None) -> bytes:
    """The SUCCESS that acknowledges a logged batch once written: LOG_METRICS's says how
    many records it holds, LOG_METRIC's (`records` None) is empty."""
    return encode_response(
        Success(timestamp=timestamp, message="" if records is None else str(records))
    )


def acked_records(message: str, sent: int) -> int:
    """How many records an acknowledgement's message says were written; an empty or
    other message (LOG_METRIC's, an older daemon's) counts all `sent`."""
    return int(message) if message.isdigit() else sent
