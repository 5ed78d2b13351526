"""Text output for the CLI: aligned tables, times, values, and JSON."""

import math
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from fetchml.protocol import shapes

from .models import Job, Metric


def fmt_time(ts: int | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_value(value: float) -> str:
    """Up to 10 significant digits; nan, inf and -inf spelled out."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, ".10g")


def fmt_duration(seconds: int | None) -> str:
    """`42s`, `3m05s`, `2h03m`, `4d07h`; `-` for None."""
    if seconds is None or seconds < 0:
        return "-"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def fmt_param(value: object) -> str:
    """A run parameter as the user typed it: strings bare, booleans as JSON, numbers as numbers."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return fmt_value(value)
    return str(value)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()
) -> str:
    """Columns padded to their widest cell; columns listed in `right` aligned right."""
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = set(right)
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if i in align else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def jobs_table(jobs: Sequence[Job]) -> str:
    rows = [
        (
            job.id[:8],
            job.job_name,
            job.status_name,
            job.priority,
            job.commit_id[:12],
            job.user,
            fmt_time(job.created_at),
            job.worker_id or "",
        )
        for job in jobs
    ]
    return table(
        ("ID", "NAME", "STATUS", "PRI", "COMMIT", "USER", "CREATED", "WORKER"), rows, right={3}
    )


def metrics_table(records: Iterable[Metric], with_time: bool = True) -> str:
    rows = [
        (r.name, r.step, fmt_value(r.value), fmt_time(r.timestamp) if with_time else "")
        for r in records
    ]
    headers = ("NAME", "STEP", "VALUE", "TIME") if with_time else ("NAME", "STEP", "VALUE", "")
    return table(headers, rows, right={1, 2})


def dumps(obj: Any) -> str:
    """Compact JSON; non-finite floats must already be strings (see shapes.json_value)."""
    return shapes.dumps(obj)


def metric_json(record: Metric) -> str:
    return dumps(shapes.metric(record))


def emit(text: str, stream: TextIO | None = None) -> None:
    out = sys.stdout if stream is None else stream
    out.write(text)
    if not text.endswith("\n"):
        out.write("\n")
    out.flush()
