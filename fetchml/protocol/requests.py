"""Requests: `[opcode:u8][api_key_hash:16][body]`, one frozen dataclass per opcode.

Each class declares its body LAYOUT as (field, kind) pairs; runs of fixed-size
fields compile into one `struct.Struct`, so decoding a LOG_METRIC is two steps.
"""

import struct
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .enums import RESERVED_OPCODES, UPDATABLE_JOB_STATUSES, JobStatus, Opcode, PruneType
from .errors import MalformedRequest
from .keys import KEY_HASH_SIZE
from .metrics import MAX_TIMESTAMP, MIN_TIMESTAMP, POINT, RECORD_HEAD, encode_point
from .rules import COMMIT_SIZE, check_metric_name, check_priority, check_step

HEADER = struct.Struct(">B16s")
HEADER_SIZE = HEADER.size

_FIXED = {"commit": "20s", "u8": "B", "u16": "H", "u32": "I", "u64": "Q", "f64": "d"}
_PREFIX = {"str8": struct.Struct(">B"), "str16": struct.Struct(">H")}
_ENUMS: dict[str, type[PruneType] | type[JobStatus]] = {
    "prune_type": PruneType,
    "status": JobStatus,
}


class _Short(Exception):
    """The body ended inside a field."""


Segment = tuple[tuple[str, ...], struct.Struct | None]


def _compile(layout: tuple[tuple[str, str], ...]) -> tuple[list[Segment], int]:
    """Merge runs of fixed fields into one Struct; strings are (name,), prefix Struct."""
    segments: list[Segment] = []
    names: list[str] = []
    fmt = ""
    size = 0
    for name, kind in layout:
        if kind in _FIXED:
            names.append(name)
            fmt += _FIXED[kind]
            continue
        if names:
            segments.append((tuple(names), struct.Struct(">" + fmt)))
            names, fmt = [], ""
        segments.append(((name, kind), None))
    if names:
        segments.append((tuple(names), struct.Struct(">" + fmt)))
    for names_, st in segments:
        size += st.size if st else _PREFIX[names_[1]].size
    return segments, size


@dataclass(frozen=True, slots=True, kw_only=True)
class _Request:
    OPCODE: ClassVar[Opcode]
    LAYOUT: ClassVar[tuple[tuple[str, str], ...]] = ()
    SEGMENTS: ClassVar[list[Segment]]
    MIN_BODY: ClassVar[int]

    key_hash: bytes

    def __init_subclass__(cls) -> None:
        cls.SEGMENTS, cls.MIN_BODY = _compile(cls.LAYOUT)

    @property
    def commit_hex(self) -> str:
        commit: bytes = getattr(self, "commit_id", b"")
        return commit.hex()

    @classmethod
    def _decode_fields(cls, data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        values: dict[str, Any] = {}
        size = len(data)
        for names, st in cls.SEGMENTS:
            if st is not None:
                if pos + st.size > size:
                    raise _Short
                values.update(zip(names, st.unpack_from(data, pos), strict=True))
                pos += st.size
                continue
            prefix = _PREFIX[names[1]]
            if pos + prefix.size > size:
                raise _Short
            (length,) = prefix.unpack_from(data, pos)
            pos += prefix.size
            if pos + length > size:
                raise _Short
            values[names[0]] = data[pos : pos + length].decode()
            pos += length
        return values, pos

    @classmethod
    def decode_body(cls, key_hash: bytes, data: bytes, pos: int) -> tuple["_Request", int]:
        values, pos = cls._decode_fields(data, pos)
        values, pos = cls._decode_tail(values, data, pos)
        for name, enum in _ENUMS.items():
            if name in values:
                try:
                    values[name] = enum(values[name])
                except ValueError:
                    raise MalformedRequest(
                        f"{cls.OPCODE.name}: invalid {name} {values[name]}"
                    ) from None
        return cls(key_hash=key_hash, **values), pos

    @classmethod
    def _decode_tail(
        cls, values: dict[str, Any], data: bytes, pos: int
    ) -> tuple[dict[str, Any], int]:
        """Optional fields after the LAYOUT (none unless a class says otherwise)."""
        return values, pos

    def encode_body(self) -> bytes:
        parts: list[bytes] = []
        for names, st in self.SEGMENTS:
            if st is not None:
                parts.append(st.pack(*(getattr(self, n) for n in names)))
                continue
            raw = getattr(self, names[0]).encode()
            prefix = _PREFIX[names[1]]
            if len(raw) >= 1 << (8 * prefix.size):
                raise MalformedRequest(f"{names[0]} too long: {len(raw)} bytes")
            parts.append(prefix.pack(len(raw)) + raw)
        return b"".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueJob(_Request):
    OPCODE = Opcode.QUEUE_JOB
    LAYOUT = (("commit_id", "commit"), ("priority", "u8"), ("job_name", "str8"))
    commit_id: bytes
    priority: int
    job_name: str

    def __post_init__(self) -> None:
        check_priority(self.priority)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueJobSpec(_Request):
    """QUEUE_JOB plus the job's spec, a JSON object (protocol/jobspec.py checks its text)."""

    OPCODE = Opcode.QUEUE_JOB_SPEC
    LAYOUT = (*QueueJob.LAYOUT, ("spec", "str16"))
    commit_id: bytes
    priority: int
    job_name: str
    spec: str

    def __post_init__(self) -> None:
        check_priority(self.priority)


@dataclass(frozen=True, slots=True, kw_only=True)
class Status(_Request):
    OPCODE = Opcode.STATUS


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelJob(_Request):
    OPCODE = Opcode.CANCEL_JOB
    LAYOUT = (("job_name", "str8"),)
    job_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Prune(_Request):
    OPCODE = Opcode.PRUNE
    LAYOUT = (("prune_type", "u8"), ("value", "u32"))
    prune_type: PruneType
    value: int

    def __post_init__(self) -> None:
        if self.value == 0:
            raise MalformedRequest("PRUNE value must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMetric(_Request):
    OPCODE = Opcode.LOG_METRIC
    LAYOUT = (("commit_id", "commit"), ("step", "u32"), ("value", "f64"), ("name", "str8"))
    commit_id: bytes
    step: int
    value: float
    name: str

    def __post_init__(self) -> None:
        check_step(self.step)
        check_metric_name(self.name)

    @classmethod
    def decode_body(cls, key_hash: bytes, data: bytes, pos: int) -> tuple["_Request", int]:
        if pos + _LOG_METRIC.size > len(data):
            raise _Short
        commit_id, step, value, length = _LOG_METRIC.unpack_from(data, pos)
        pos += _LOG_METRIC.size
        if pos + length > len(data):
            raise _Short
        name = data[pos : pos + length].decode()
        return cls(key_hash=key_hash, commit_id=commit_id, step=step, value=value, name=name), (
            pos + length
        )

    def tails(self) -> list[bytes]:
        """The metric as a metrics.bin record holds it after the timestamp."""
        return [encode_point(self.step, self.value, self.name.encode())]


_LOG_METRIC = struct.Struct(">20sIdB")
_COUNT = struct.Struct(">H")


@dataclass(frozen=True, slots=True, kw_only=True)
class GetExperiment(_Request):
    OPCODE = Opcode.GET_EXPERIMENT
    LAYOUT = (("commit_id", "commit"),)
    commit_id: bytes


class MetricPoint(NamedTuple):
    step: int
    value: float
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMetrics(_Request):
    OPCODE = Opcode.LOG_METRICS
    LAYOUT = (("commit_id", "commit"), ("count", "u16"))
    MAX_POINTS: ClassVar[int] = 0xFFFF
    commit_id: bytes
    metrics: tuple[MetricPoint, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.metrics) <= self.MAX_POINTS:
            raise MalformedRequest(
                f"LOG_METRICS count must be 1..{self.MAX_POINTS}, got {len(self.metrics)}"
            )
        for point in self.metrics:
            check_step(point.step)
            check_metric_name(point.name)

    @classmethod
    def decode_body(cls, key_hash: bytes, data: bytes, pos: int) -> tuple["_Request", int]:
        values, pos = cls._decode_fields(data, pos)
        size = len(data)
        unpack = POINT.unpack_from
        points: list[MetricPoint] = []
        for _ in range(values["count"]):
            if pos + POINT.size > size:
                raise _Short
            step, value, length = unpack(data, pos)
            pos += POINT.size
            if pos + length > size:
                raise _Short
            points.append(MetricPoint(step, value, data[pos : pos + length].decode()))
            pos += length
        return cls(key_hash=key_hash, commit_id=values["commit_id"], metrics=tuple(points)), pos

    @property
    def count(self) -> int:
        return len(self.metrics)

    def encode_body(self) -> bytes:
        return self.commit_id + _COUNT.pack(len(self.metrics)) + b"".join(self.tails())

    def tails(self) -> list[bytes]:
        """Each metric as a metrics.bin record holds it after the timestamp."""
        return [encode_point(step, value, name.encode()) for step, value, name in self.metrics]


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateExperiment(_Request):
    OPCODE = Opcode.CREATE_EXPERIMENT
    LAYOUT = (("commit_id", "commit"), ("job_name", "str8"))
    commit_id: bytes
    job_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ListExperiments(_Request):
    OPCODE = Opcode.LIST_EXPERIMENTS


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryMetrics(_Request):
    OPCODE = Opcode.QUERY_METRICS
    LAYOUT = (
        ("commit_id", "commit"),
        ("name", "str8"),
        ("step_from", "u32"),
        ("step_to", "u32"),
        ("max_points", "u32"),
        ("after", "u64"),
        ("limit", "u32"),
    )
    commit_id: bytes
    name: str = ""
    step_from: int = 0
    step_to: int = 0xFFFFFFFF
    max_points: int = 0
    after: int = 0
    limit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchMetrics(_Request):
    OPCODE = Opcode.WATCH_METRICS
    LAYOUT = (("commit_id", "commit"), ("from_index", "u64"), ("name", "str8"))
    commit_id: bytes
    from_index: int = 0
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimJob(_Request):
    OPCODE = Opcode.CLAIM_JOB
    LAYOUT = (("worker_id", "str8"),)
    worker_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateJob(_Request):
    """A worker's report on its job; `worker_id` (a trailing str8 that old clients never
    send) must then equal the job's."""

    OPCODE = Opcode.UPDATE_JOB
    LAYOUT = (("job_id", "str8"), ("status", "u8"), ("error", "str16"))
    job_id: str
    status: JobStatus
    error: str = ""
    worker_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in UPDATABLE_JOB_STATUSES:
            raise MalformedRequest(
                f"UPDATE_JOB status must be 1 running, 2 completed or 3 failed, got {self.status}"
            )

    @classmethod
    def _decode_tail(
        cls, values: dict[str, Any], data: bytes, pos: int
    ) -> tuple[dict[str, Any], int]:
        if pos == len(data):
            return values, pos
        end = pos + 1 + data[pos]
        if end > len(data):
            raise _Short
        return values | {"worker_id": data[pos + 1 : end].decode()}, end

    def encode_body(self) -> bytes:
        body = _Request.encode_body(self)
        if self.worker_id is None:
            return body
        raw = self.worker_id.encode()
        if len(raw) > 0xFF:
            raise MalformedRequest(f"worker_id too long: {len(raw)} bytes")
        return body + bytes([len(raw)]) + raw


@dataclass(frozen=True, slots=True, kw_only=True)
class WhoAmI(_Request):
    OPCODE = Opcode.WHOAMI


@dataclass(frozen=True, slots=True, kw_only=True)
class PrunePreview(_Request):
    """PRUNE's selection without removing anything."""

    OPCODE = Opcode.PRUNE_PREVIEW
    LAYOUT = Prune.LAYOUT
    prune_type: PruneType
    value: int

    def __post_init__(self) -> None:
        if self.value == 0:
            raise MalformedRequest("PRUNE_PREVIEW value must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRun(_Request):
    """A JSON merge patch of the run document (protocol/runs.py checks its text)."""

    OPCODE = Opcode.UPDATE_RUN
    LAYOUT = (("commit_id", "commit"), ("patch", "str16"))
    commit_id: bytes
    patch: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMetricsAt(_Request):
    """LOG_METRICS whose points carry the client's timestamps: `records` are whole
    metrics.bin records, stored byte for byte."""

    OPCODE = Opcode.LOG_METRICS_AT
    LAYOUT = (("commit_id", "commit"), ("count", "u16"))
    MAX_POINTS: ClassVar[int] = 0xFFFF
    commit_id: bytes
    count: int
    records: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.count <= self.MAX_POINTS:
            raise MalformedRequest(
                f"LOG_METRICS_AT count must be 1..{self.MAX_POINTS}, got {self.count}"
            )
        end = check_stamped_records(self.records, 0, self.count)
        if end != len(self.records):
            raise MalformedRequest(
                f"LOG_METRICS_AT: {len(self.records) - end} bytes after {self.count} records"
            )

    @classmethod
    def decode_body(cls, key_hash: bytes, data: bytes, pos: int) -> tuple["_Request", int]:
        values, start = cls._decode_fields(data, pos)
        count = values["count"]
        if count == 0:
            raise MalformedRequest(f"LOG_METRICS_AT count must be 1..{cls.MAX_POINTS}, got 0")
        end = check_stamped_records(data, start, count)
        req = cls(
            key_hash=key_hash, commit_id=values["commit_id"], count=count, records=data[start:end]
        )
        return req, end

    def encode_body(self) -> bytes:
        return self.commit_id + _COUNT.pack(self.count) + self.records


def check_stamped_records(data: bytes, pos: int, count: int) -> int:
    """Where `count` whole records starting at `pos` end; MalformedRequest for a record
    cut short, a timestamp outside MIN_TIMESTAMP..MAX_TIMESTAMP-1, or a bad name."""
    size = len(data)
    unpack = RECORD_HEAD.unpack_from
    for index in range(count):
        if pos + RECORD_HEAD.size > size:
            raise _Short
        timestamp, _step, _value, length = unpack(data, pos)
        pos += RECORD_HEAD.size
        if pos + length > size:
            raise _Short
        if not MIN_TIMESTAMP <= timestamp < MAX_TIMESTAMP:
            raise MalformedRequest(
                f"LOG_METRICS_AT record {index}: timestamp {timestamp} outside "
                f"{MIN_TIMESTAMP}..{MAX_TIMESTAMP - 1}"
            )
        name = data[pos : pos + length]
        if not length or 0 in name:
            raise MalformedRequest(
                f"LOG_METRICS_AT record {index}: metric name must be 1..255 bytes of UTF-8 "
                f"without 0x00, got {length} bytes"
            )
        name.decode()
        pos += length
    return pos


@dataclass(frozen=True, slots=True, kw_only=True)
class ListRuns(_Request):
    """A page of the experiments matching a JSON filter (protocol/runs.py checks its text)."""

    OPCODE = Opcode.LIST_RUNS
    LAYOUT = (("filter", "str16"),)
    filter: str = ""


Request = (
    QueueJob
    | QueueJobSpec
    | Status
    | CancelJob
    | Prune
    | LogMetric
    | GetExperiment
    | LogMetrics
    | CreateExperiment
    | ListExperiments
    | QueryMetrics
    | WatchMetrics
    | ClaimJob
    | UpdateJob
    | WhoAmI
    | PrunePreview
    | UpdateRun
    | LogMetricsAt
    | ListRuns
)

REQUEST_TYPES: dict[int, type[_Request]] = {
    cls.OPCODE: cls
    for cls in (
        QueueJob,
        QueueJobSpec,
        Status,
        CancelJob,
        Prune,
        LogMetric,
        GetExperiment,
        LogMetrics,
        CreateExperiment,
        ListExperiments,
        QueryMetrics,
        WatchMetrics,
        ClaimJob,
        UpdateJob,
        WhoAmI,
        PrunePreview,
        UpdateRun,
        LogMetricsAt,
        ListRuns,
    )
}


def decode_request(message: bytes) -> Request:
    """Decode one request message; every defect raises MalformedRequest."""
    if len(message) < HEADER_SIZE:
        raise MalformedRequest(
            f"message too short: {len(message)} bytes, a request needs at least {HEADER_SIZE}"
        )
    opcode, key_hash = HEADER.unpack_from(message)
    cls = REQUEST_TYPES.get(opcode)
    if cls is None:
        word = "unsupported" if opcode in RESERVED_OPCODES else "unknown"
        raise MalformedRequest(f"{word} opcode 0x{opcode:02x}")
    body = len(message) - HEADER_SIZE
    try:
        request, end = cls.decode_body(key_hash, message, HEADER_SIZE)
    except (_Short, UnicodeDecodeError) as exc:
        why = "body too short" if isinstance(exc, _Short) else "invalid UTF-8 in a string"
        raise MalformedRequest(
            f"{cls.OPCODE.name} (0x{opcode:02x}): {why}; "
            f"minimum body length {cls.MIN_BODY}, actual {body}"
        ) from None
    if end != len(message):
        raise MalformedRequest(
            f"{cls.OPCODE.name} (0x{opcode:02x}): {len(message) - end} trailing bytes; "
            f"minimum body length {cls.MIN_BODY}, actual {body}"
        )
    return request  # type: ignore[return-value]


LOG_METRICS_HEAD = HEADER_SIZE + COMMIT_SIZE + _COUNT.size
"""Bytes of a LOG_METRICS before its points."""


def log_metrics_head(key_hash: bytes, commit_id: bytes, count: int) -> bytes:
    """The bytes of a LOG_METRICS before its `count` points (LOG_METRICS_HEAD of them)."""
    if not 1 <= count <= LogMetrics.MAX_POINTS:
        raise MalformedRequest(f"LOG_METRICS count must be 1..{LogMetrics.MAX_POINTS}, got {count}")
    if len(commit_id) != COMMIT_SIZE:
        raise MalformedRequest(f"commit_id must be {COMMIT_SIZE} bytes, got {len(commit_id)}")
    return HEADER.pack(Opcode.LOG_METRICS, key_hash) + commit_id + _COUNT.pack(count)


def log_metrics_at_head(key_hash: bytes, commit_id: bytes, count: int) -> bytes:
    """The bytes of a LOG_METRICS_AT before its `count` records (LOG_METRICS_HEAD of them)."""
    head = log_metrics_head(key_hash, commit_id, count)
    return HEADER.pack(Opcode.LOG_METRICS_AT, key_hash) + head[HEADER_SIZE:]


def encode_log_metrics(key_hash: bytes, commit_id: bytes, count: int, points: bytes) -> bytes:
    """A LOG_METRICS request from points already encoded (see metrics.encode_point), as
    LogMetrics would encode them: MetricLogger's path, which never builds the objects."""
    return log_metrics_head(key_hash, commit_id, count) + points


def encode_request(request: Request) -> bytes:
    if len(request.key_hash) != KEY_HASH_SIZE:
        raise MalformedRequest(f"api_key_hash must be {KEY_HASH_SIZE} bytes")
    commit: bytes | None = getattr(request, "commit_id", None)
    if commit is not None and len(commit) != COMMIT_SIZE:
        raise MalformedRequest(f"commit_id must be {COMMIT_SIZE} bytes, got {len(commit)}")
    return HEADER.pack(request.OPCODE, request.key_hash) + request.encode_body()
