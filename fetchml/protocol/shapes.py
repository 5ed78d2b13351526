"""The JSON shapes of PROTOCOL.md section 4: DATA payloads other than `metrics`, and
STATUS. One builder per shape, used by the daemon to send and by clients to print,
with the keys in the one order the document shows; one reader per shape, which
ignores keys it does not know and raises MalformedResponse for anything else amiss.

Readers return the builder's keyword arguments, so `shape(**read_shape(obj))`
gives back the object (a metric is a MetricRecord).
"""

import json
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .enums import JobStatus
from .errors import MalformedResponse
from .metrics import MetricRecord
from .records import Metadata

T = TypeVar("T")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def dumps(obj: Any) -> str:
    """Compact JSON (no spaces), non-finite floats refused: values go through json_value."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def dumps_utf8(obj: Any) -> str:
    """Compact JSON with non-ASCII characters as they are (not as \\u escapes): the
    payloads that carry run documents, whose size limit is in UTF-8 bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_value(value: float) -> float | str:
    """A metric value for JSON: finite as is, else "NaN", "Infinity", "-Infinity"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def float_value(raw: object) -> float:
    """A metric value read from JSON (the inverse of json_value)."""
    if isinstance(raw, str) and raw in _NON_FINITE:
        return _NON_FINITE[raw]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise MalformedResponse(f"metric value must be a number, got {raw!r}")
    return float(raw)


def read(shape: str, obj: Any, reader: Callable[[Any], T]) -> T:
    """`reader(obj)`, its KeyError, TypeError or ValueError told as a MalformedResponse."""
    try:
        return reader(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponse(f"unexpected {shape} JSON: {exc!r}") from None


def _int(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise TypeError(f"expected an integer, got {raw!r}")
    return raw


def _opt_int(raw: Any) -> int | None:
    return None if raw is None else _int(raw)


def _opt_str(raw: Any) -> str | None:
    return None if raw is None else str(raw)


# -- metric ------------------------------------------------------------------------


def metric(record: MetricRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "value": json_value(record.value),
        "step": record.step,
        "timestamp": record.timestamp,
    }


def read_metric(obj: Any) -> MetricRecord:
    return read("metric", obj, _read_metric)


def _read_metric(obj: Any) -> MetricRecord:
    return MetricRecord(
        timestamp=_int(obj["timestamp"]),
        step=_int(obj["step"]),
        value=float_value(obj["value"]),
        name=str(obj["name"]),
    )


# -- experiment, experiments ---------------------------------------------------------


def meta_fields(meta: Metadata | None) -> dict[str, Any]:
    """timestamp, job_name and user of a meta.bin; all None when it is unreadable."""
    if meta is None:
        return {"timestamp": None, "job_name": None, "user": None}
    return {"timestamp": meta.timestamp, "job_name": meta.job_name, "user": meta.user}


def _metadata(
    commit_id: str, timestamp: int | None, job_name: str | None, user: str | None
) -> dict[str, Any]:
    return {"commit_id": commit_id, "timestamp": timestamp, "job_name": job_name, "user": user}


def _read_metadata(obj: Any) -> dict[str, Any]:
    return {
        "commit_id": str(obj["commit_id"]),
        "timestamp": _opt_int(obj.get("timestamp")),
        "job_name": _opt_str(obj.get("job_name")),
        "user": _opt_str(obj.get("user")),
    }


def experiment(
    *,
    commit_id: str,
    timestamp: int | None,
    job_name: str | None,
    user: str | None,
    metrics: Iterable[MetricRecord],
    metrics_count: int,
    metrics_truncated: bool,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """GET_EXPERIMENT's `experiment`; `run` is the run document (None without one)."""
    return {
        "metadata": _metadata(commit_id, timestamp, job_name, user),
        "metrics": [metric(m) for m in metrics],
        "metrics_count": metrics_count,
        "metrics_truncated": metrics_truncated,
        "run": run,
    }


def read_experiment(obj: Any) -> dict[str, Any]:
    def reader(obj: Any) -> dict[str, Any]:
        return _read_metadata(obj["metadata"]) | {
            "metrics": tuple(_read_metric(m) for m in obj["metrics"]),
            "metrics_count": _int(obj["metrics_count"]),
            "metrics_truncated": bool(obj["metrics_truncated"]),
            "run": _read_run(obj.get("run")),
        }

    return read("experiment", obj, reader)


def experiments_item(
    *,
    commit_id: str,
    timestamp: int | None,
    job_name: str | None,
    user: str | None,
    metrics_count: int,
    damaged: str | None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One item of LIST_EXPERIMENTS's `experiments`."""
    return _metadata(commit_id, timestamp, job_name, user) | {
        "metrics_count": metrics_count,
        "damaged": damaged,
        "run": run,
    }


def read_experiments_item(obj: Any) -> dict[str, Any]:
    def reader(obj: Any) -> dict[str, Any]:
        return _read_metadata(obj) | {
            "metrics_count": _int(obj["metrics_count"]),
            "damaged": _opt_str(obj.get("damaged")),
            "run": _read_run(obj.get("run")),
        }

    return read("experiments item", obj, reader)


# -- runs ------------------------------------------------------------------------------


def _read_run(raw: Any) -> dict[str, Any] | None:
    """A run document (an object, kept as it is) or None."""
    if raw is not None and not isinstance(raw, dict):
        raise TypeError(f"run must be an object or null, got {raw!r}")
    return raw


def read_run(obj: Any) -> dict[str, Any]:
    """UPDATE_RUN's `run`: the bare document."""

    def reader(obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise TypeError(f"run must be an object, got {obj!r}")
        return obj

    return read("run", obj, reader)


def run_summary(
    *,
    id: str,
    metrics_count: int,
    timestamp: int | None,
    job_name: str | None,
    user: str | None,
    run: dict[str, Any] | None,
) -> dict[str, Any]:
    """One row of LIST_RUNS's `runs`."""
    return {
        "id": id,
        "metrics_count": metrics_count,
        "metadata": _metadata(id, timestamp, job_name, user),
        "run": run,
    }


def _read_run_summary(obj: Any) -> dict[str, Any]:
    meta = _read_metadata(obj["metadata"])
    del meta["commit_id"]
    return (
        {"id": str(obj["id"]), "metrics_count": _int(obj["metrics_count"])}
        | meta
        | {"run": _read_run(obj["run"])}
    )


def runs(*, runs: list[dict[str, Any]], total: int, next_offset: int | None) -> dict[str, Any]:
    """LIST_RUNS's `runs`: a page of run_summary rows."""
    return {"runs": runs, "total": total, "next_offset": next_offset}


def read_runs(obj: Any) -> dict[str, Any]:
    """`runs` as a list of run_summary keyword arguments."""

    def reader(obj: Any) -> dict[str, Any]:
        return {
            "runs": [_read_run_summary(row) for row in obj["runs"]],
            "total": _int(obj["total"]),
            "next_offset": _opt_int(obj["next_offset"]),
        }

    return read("runs", obj, reader)


# -- jobs ------------------------------------------------------------------------------


def job(
    *,
    id: str,
    job_name: str,
    args: str,
    status: JobStatus,
    priority: int,
    created_at: int,
    started_at: int | None,
    ended_at: int | None,
    worker_id: str | None,
    claimed_by: str | None,
    error: str | None,
    datasets: Iterable[str],
    commit_id: str,
    user: str,
    spec: dict[str, Any] | None,
    attempts: int,
    heartbeat_at: int | None,
) -> dict[str, Any]:
    """`job` (QUEUE_JOB, QUEUE_JOB_SPEC, CLAIM_JOB, the items of STATUS `jobs`)."""
    return {
        "id": id,
        "job_name": job_name,
        "args": args,
        "status": status.name.lower(),
        "priority": priority,
        "created_at": created_at,
        "started_at": started_at,
        "ended_at": ended_at,
        "worker_id": worker_id,
        "claimed_by": claimed_by,
        "error": error,
        "datasets": list(datasets),
        "metadata": {"commit_id": commit_id, "user": user},
        "spec": spec,
        "attempts": attempts,
        "heartbeat_at": heartbeat_at,
    }


def _read_job(obj: Any) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "id": str(obj["id"]),
        "job_name": str(obj["job_name"]),
        "args": str(obj.get("args") or ""),
        "status": JobStatus[str(obj["status"]).upper()],
        "priority": _int(obj["priority"]),
        "created_at": _int(obj["created_at"]),
        "started_at": _opt_int(obj.get("started_at")),
        "ended_at": _opt_int(obj.get("ended_at")),
        "worker_id": _opt_str(obj.get("worker_id")),
        "claimed_by": _opt_str(obj.get("claimed_by")),
        "error": _opt_str(obj.get("error")),
        "datasets": tuple(str(d) for d in obj.get("datasets") or ()),
        "commit_id": str(meta["commit_id"]),
        "user": str(meta["user"]),
        "spec": _opt_spec(obj.get("spec")),
        "attempts": _int(obj.get("attempts", 0)),
        "heartbeat_at": _opt_int(obj.get("heartbeat_at")),
    }


def _opt_spec(value: Any) -> dict[str, Any] | None:
    """A job's spec (an object) or None; a daemon before revision 4 sends none."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"spec: expected an object, got {type(value).__name__}")
    return value


def read_job(obj: Any) -> dict[str, Any]:
    return read("job", obj, _read_job)


def status(
    *, user: str, role: str, jobs: list[dict[str, Any]], queue_length: int, total: int
) -> dict[str, Any]:
    """The STATUS packet's JSON; `jobs` holds `job` shapes."""
    return {"user": user, "role": role, "jobs": jobs, "queue_length": queue_length, "total": total}


def read_status(obj: Any) -> dict[str, Any]:
    """`jobs` as a list of read_job results; `total` defaults to their number."""

    def reader(obj: Any) -> dict[str, Any]:
        jobs = [_read_job(j) for j in obj["jobs"]]
        return {
            "user": str(obj["user"]),
            "role": str(obj["role"]),
            "jobs": jobs,
            "queue_length": _int(obj["queue_length"]),
            "total": _int(obj.get("total", len(jobs))),
        }

    return read("status", obj, reader)


# -- whoami, pruned ----------------------------------------------------------------------


def whoami(
    *,
    user: str,
    role: str,
    permissions: Iterable[str],
    scope: str,
    read_scope: str,
    write_scope: str,
    limits: dict[str, Any] | None,
) -> dict[str, Any]:
    """`whoami`: permissions sorted; `scope` is the write scope; `limits` holds `lease_s`,
    `crash_after_s` and `max_message_bytes`."""
    return {
        "user": user,
        "role": role,
        "permissions": sorted(permissions),
        "scope": scope,
        "read_scope": read_scope,
        "write_scope": write_scope,
        "limits": limits,
    }


def whoami_limits(
    *, lease_s: float, crash_after_s: float, max_message_bytes: int
) -> dict[str, Any]:
    """WHOAMI's `limits` (whole seconds as integers)."""
    return {
        "lease_s": _number(lease_s),
        "crash_after_s": _number(crash_after_s),
        "max_message_bytes": max_message_bytes,
    }


def _number(value: float) -> float:
    return int(value) if float(value).is_integer() else value


def read_whoami(obj: Any) -> dict[str, Any]:
    """A daemon from before scopes were split sends `scope` alone (it is both) and no
    `limits` (None)."""

    def reader(obj: Any) -> dict[str, Any]:
        scope = str(obj["scope"])
        limits = obj.get("limits")
        return {
            "user": str(obj["user"]),
            "role": str(obj["role"]),
            "permissions": tuple(str(p) for p in obj["permissions"]),
            "scope": scope,
            "read_scope": str(obj.get("read_scope", scope)),
            "write_scope": str(obj.get("write_scope", scope)),
            "limits": None
            if limits is None
            else {
                "lease_s": _seconds(limits["lease_s"]),
                "crash_after_s": _seconds(limits["crash_after_s"]),
                "max_message_bytes": _int(limits["max_message_bytes"]),
            },
        }

    return read("whoami", obj, reader)


def _seconds(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TypeError(f"expected a number of seconds, got {raw!r}")
    return raw


def pruned(commits: Iterable[str]) -> dict[str, Any]:
    """`pruned` (PRUNE, PRUNE_PREVIEW): commits in ascending order."""
    return {"pruned": list(commits)}


def read_pruned(obj: Any) -> list[str]:
    return read("pruned", obj, lambda o: [str(c) for c in o["pruned"]])
