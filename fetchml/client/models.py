"""Typed results of client calls, parsed from the JSON and binary payloads of PROTOCOL.md.

`Metric` is the protocol's `MetricRecord` (a NamedTuple: timestamp, step, value,
name): reads return millions of them, and a tuple costs a fraction of a
dataclass. Everything else is a frozen dataclass built by `from_json`.
"""

from dataclasses import dataclass
from typing import Any

from fetchml.protocol.enums import JobStatus, PruneType
from fetchml.protocol.metrics import MetricRecord
from fetchml.protocol.responses import float_value, json_value

from .errors import InvalidRequest

Metric = MetricRecord
"""One metric: `timestamp` (Unix seconds, set by the server), `step`, `value`, `name`."""

COMMIT_BYTES = 20
MAX_STEP = 0xFFFFFFFF


def parse_commit(commit: str | bytes) -> bytes:
    """A commit as the 20 raw bytes the wire carries; accepts 40 hex characters or 20 bytes."""
    if isinstance(commit, bytes):
        if len(commit) != COMMIT_BYTES:
            raise InvalidRequest(f"commit must be 20 bytes, got {len(commit)}")
        return commit
    text = commit.strip()
    if len(text) != 2 * COMMIT_BYTES:
        raise InvalidRequest(f"commit must be 40 hex characters, got {commit!r}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidRequest(f"commit must be 40 hex characters, got {commit!r}") from None


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


def metric_from_json(obj: dict[str, Any]) -> Metric:
    return Metric(
        timestamp=int(obj["timestamp"]),
        step=int(obj["step"]),
        value=float_value(obj["value"]),
        name=str(obj["name"]),
    )


def metric_to_json(metric: Metric) -> dict[str, Any]:
    return {
        "name": metric.name,
        "step": metric.step,
        "value": json_value(metric.value),
        "timestamp": metric.timestamp,
    }


def _opt_int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def _opt_str(raw: Any) -> str | None:
    return None if raw is None else str(raw)


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

    @property
    def status_name(self) -> str:
        return self.status.name.lower()

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Job":
        meta = obj["metadata"]
        return cls(
            id=str(obj["id"]),
            job_name=str(obj["job_name"]),
            status=JobStatus[str(obj["status"]).upper()],
            priority=int(obj["priority"]),
            created_at=int(obj["created_at"]),
            commit_id=str(meta["commit_id"]),
            user=str(meta["user"]),
            args=str(obj.get("args") or ""),
            started_at=_opt_int(obj.get("started_at")),
            ended_at=_opt_int(obj.get("ended_at")),
            worker_id=_opt_str(obj.get("worker_id")),
            error=_opt_str(obj.get("error")),
            datasets=tuple(str(d) for d in obj.get("datasets") or ()),
            claimed_by=_opt_str(obj.get("claimed_by")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_name": self.job_name,
            "args": self.args,
            "status": self.status_name,
            "priority": self.priority,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "worker_id": self.worker_id,
            "claimed_by": self.claimed_by,
            "error": self.error,
            "datasets": list(self.datasets),
            "metadata": {"commit_id": self.commit_id, "user": self.user},
        }


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
    def from_json(cls, obj: dict[str, Any]) -> "Status":
        return cls(
            user=str(obj["user"]),
            role=str(obj["role"]),
            jobs=tuple(Job.from_json(j) for j in obj["jobs"]),
            queue_length=int(obj["queue_length"]),
            total=int(obj.get("total", len(obj["jobs"]))),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "role": self.role,
            "jobs": [job.to_json() for job in self.jobs],
            "queue_length": self.queue_length,
            "total": self.total,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WhoAmI:
    user: str
    role: str
    permissions: tuple[str, ...]
    scope: str

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "WhoAmI":
        return cls(
            user=str(obj["user"]),
            role=str(obj["role"]),
            permissions=tuple(str(p) for p in obj["permissions"]),
            scope=str(obj["scope"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "role": self.role,
            "permissions": list(self.permissions),
            "scope": self.scope,
        }


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

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "ExperimentSummary":
        return cls(
            commit_id=str(obj["commit_id"]),
            timestamp=_opt_int(obj.get("timestamp")),
            job_name=_opt_str(obj.get("job_name")),
            user=_opt_str(obj.get("user")),
            metrics_count=int(obj["metrics_count"]),
            damaged=_opt_str(obj.get("damaged")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "commit_id": self.commit_id,
            "timestamp": self.timestamp,
            "job_name": self.job_name,
            "user": self.user,
            "metrics_count": self.metrics_count,
            "damaged": self.damaged,
        }


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

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Experiment":
        meta = obj["metadata"]
        return cls(
            commit_id=str(meta["commit_id"]),
            timestamp=_opt_int(meta.get("timestamp")),
            job_name=_opt_str(meta.get("job_name")),
            user=_opt_str(meta.get("user")),
            metrics=tuple(metric_from_json(m) for m in obj["metrics"]),
            metrics_count=int(obj["metrics_count"]),
            metrics_truncated=bool(obj["metrics_truncated"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "metadata": {
                "commit_id": self.commit_id,
                "timestamp": self.timestamp,
                "job_name": self.job_name,
                "user": self.user,
            },
            "metrics": [metric_to_json(m) for m in self.metrics],
            "metrics_count": self.metrics_count,
            "metrics_truncated": self.metrics_truncated,
        }
