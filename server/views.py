"""JSON shapes of PROTOCOL.md section 4, shared by handlers and operator commands."""

import json
import math
from typing import Any

from protocol.records import Metadata, MetricRecord


def json_value(value: float) -> float | str:
    """Non-finite values travel as the strings "NaN", "Infinity", "-Infinity"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def metadata_json(commit: str, meta: Metadata | None) -> dict[str, Any]:
    if meta is None:
        return {"commit_id": commit, "timestamp": None, "job_name": None, "user": None}
    return {
        "commit_id": commit,
        "timestamp": meta.timestamp,
        "job_name": meta.job_name,
        "user": meta.user,
    }


def record_json(record: MetricRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "value": json_value(record.value),
        "step": record.step,
        "timestamp": record.timestamp,
    }


def experiment_json(
    commit: str, meta: Metadata | None, records: list[MetricRecord], count: int, truncated: bool
) -> dict[str, Any]:
    return {
        "metadata": metadata_json(commit, meta),
        "metrics": [record_json(r) for r in records],
        "metrics_count": count,
        "metrics_truncated": truncated,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)
