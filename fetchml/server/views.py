"""JSON shapes of PROTOCOL.md section 4, shared by handlers and operator commands."""

import json
from typing import Any

from fetchml.protocol.metrics import MetricRecord
from fetchml.protocol.records import Metadata
from fetchml.protocol.responses import json_value


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
