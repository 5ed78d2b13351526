"""Typed results of client calls, parsed from the JSON and binary payloads of PROTOCOL.md.

`Metric` is the protocol's `MetricRecord` (a NamedTuple: timestamp, step, value,
name): reads return millions of them, and a tuple costs a fraction of a
dataclass. Everything else is a frozen dataclass built from, and turned back
into, the protocol's JSON shapes (protocol.shapes), in the daemon's key order.
"""

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from fetchml.protocol import shapes
from fetchml.protocol.enums import JobStatus, PruneType
from fetchml.protocol.errors import MalformedRequest, MalformedResponse
from fetchml.protocol.metrics import MetricRecord
from fetchml.protocol.rules import MAX_STEP as MAX_STEP
from fetchml.protocol.rules import parse_commit as _parse_commit

from .errors import InvalidRequest, ProtocolViolation

Metric = MetricRecord
"""One metric: `timestamp` (Unix seconds, set by the server), `step`, `value`, `name`."""

T = TypeVar("T")


def parse_commit(commit: str | bytes) -> bytes:
    """A commit as the 20 raw bytes the wire carries; accepts 40 hex characters or 20 bytes."""
    try:
        return _parse_commit(commit)
    except MalformedRequest as exc:
        raise InvalidRequest(exc.message) from None


def commit_hex(commit: str | bytes) -> str:
    return parse_commit(commit).hex()


def prune_selection(keep: int | None, older_than_days: int | None) -> tuple[PruneType, int]:
    """PRUNE's (and PRUNE_PREVIEW's) type and value: exactly one of the two, 1..2^32-1."""
    if (keep is None) == (older_than_days is None):
        raise InvalidRequest("prune needs exactly one of keep= or older_than_days=")
    value = keep if keep is not None else older_than_days
    assert value is not None
    if not 1 <= value <= 0xFFFFFFFF:
        raise InvalidRequest(f"prune value must be 1..4294967295, got {value}")
    kind = PruneType.KEEP_NEWEST if keep is not None else PruneType.OLDER_THAN_DAYS
    return kind, value


def _read(reader: Callable[[Any], T], obj: Any) -> T:
    """A protocol shape reader's result; a malformed shape is a ProtocolViolation."""
    try:
        return reader(obj)
    except MalformedResponse as exc:
        raise ProtocolViolation(exc.message) from None


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def metric_from_json(obj: Any) -> Metric:
    return _read(shapes.read_metric, obj)


metric_to_json = shapes.metric


def pruned_from_json(obj: Any) -> list[str]:
    return _read(shapes.read_pruned, obj)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsPage:
    """One page of QUERY_METRICS or one WATCH_METRICS push.

    `next` is the record index to continue from (for a query, 0 when the scan
    reached the end of the file).
    """

    next: int
    records: tuple[Metric, ...]

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    id: str
    job_name: str
    status: JobStatus
    priority: int
    created_at: int
    commit_id: str
    user: str
    args: str = ""
    started_at: int | None = None
    ended_at: int | None = None
    worker_id: str | None = None
    error: str | None = None
    datasets: tuple[str, ...] = ()
    claimed_by: str | None = None
    spec: dict[str, Any] | None = None
    """What a worker runs: command, env, workdir, max_attempts, timeout_s (None for a job
    queued without one)."""
    attempts: int = 0
    """How many times the job's lease expired (its worker died) and it was requeued."""
    heartbeat_at: int | None = None

    @property
    def status_name(self) -> str:
        return self.status.name.lower()

    @classmethod
    def from_json(cls, obj: Any) -> "Job":
        return cls(**_read(shapes.read_job, obj))

    def to_json(self) -> dict[str, Any]:
        return shapes.job(**_fields(self))


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """STATUS: who is asking, the newest jobs they may read that fit in one message,
    how many they may read in all (`total`), all users' queue length."""

    user: str
    role: str
    jobs: tuple[Job, ...]
    queue_length: int
    total: int

    @classmethod
    def from_json(cls, obj: Any) -> "Status":
        values = _read(shapes.read_status, obj)
        return cls(**values | {"jobs": tuple(Job(**job) for job in values["jobs"])})

    def to_json(self) -> dict[str, Any]:
        return shapes.status(**_fields(self) | {"jobs": [job.to_json() for job in self.jobs]})


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The daemon's limits a client adapts to (WHOAMI `limits`)."""

    lease_s: float
    crash_after_s: float
    max_message_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WhoAmI:
    """`scope` is the write scope. From a daemon older than split scopes, `read_scope` and
    `write_scope` are its `scope` and `limits` is None."""

    user: str
    role: str
    permissions: tuple[str, ...]
    scope: str
    read_scope: str = ""
    write_scope: str = ""
    limits: Limits | None = None

    def __post_init__(self) -> None:
        for name in ("read_scope", "write_scope"):
            if not getattr(self, name):
                object.__setattr__(self, name, self.scope)

    @classmethod
    def from_json(cls, obj: Any) -> "WhoAmI":
        values = _read(shapes.read_whoami, obj)
        limits = values["limits"]
        return cls(**values | {"limits": None if limits is None else Limits(**limits)})

    def to_json(self) -> dict[str, Any]:
        limits = None if self.limits is None else shapes.whoami_limits(**_fields(self.limits))
        return shapes.whoami(**_fields(self) | {"limits": limits})


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentSummary:
    """One LIST_EXPERIMENTS row; timestamp, job_name and user are None when meta.bin is
    unreadable; `damaged` says why an entry of the data directory cannot be used."""

    commit_id: str
    timestamp: int | None
    job_name: str | None
    user: str | None
    metrics_count: int
    damaged: str | None = None
    run: dict[str, Any] | None = None
    """The run document (None without one)."""

    @classmethod
    def from_json(cls, obj: Any) -> "ExperimentSummary":
        return cls(**_read(shapes.read_experiments_item, obj))

    def to_json(self) -> dict[str, Any]:
        return shapes.experiments_item(**_fields(self))


@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    """GET_EXPERIMENT: metadata and metrics (the newest that fit when `metrics_truncated`)."""

    commit_id: str
    timestamp: int | None
    job_name: str | None
    user: str | None
    metrics: tuple[Metric, ...]
    metrics_count: int
    metrics_truncated: bool
    run: dict[str, Any] | None = None
    """The run document (None without one)."""

    @classmethod
    def from_json(cls, obj: Any) -> "Experiment":
        return cls(**_read(shapes.read_experiment, obj))

    def to_json(self) -> dict[str, Any]:
        return shapes.experiment(**_fields(self))
