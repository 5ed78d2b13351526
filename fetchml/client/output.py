"""Text output for the CLI: aligned tables, times, values, and JSON."""

import math
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from fetchml.protocol import shapes

from .columns import Columns, json_values
from .models import Job, Metric

COMMAND_WIDTH = 40
"""The jobs table cuts a longer command to this many characters."""


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


def fmt_age(ts: int | None, now: float) -> str:
    """`12s ago`, `3m05s ago`; `-` for None."""
    return "-" if ts is None else f"{fmt_duration(max(0, int(now) - ts))} ago"


def fmt_command(spec: dict[str, Any] | None, width: int = COMMAND_WIDTH) -> str:
    """A job's command as a shell would take it, cut to `width` characters; `-` without one."""
    if spec is None:
        return "-"
    text = shlex.join(spec["command"])
    return text if len(text) <= width else text[: width - 3] + "..."


def jobs_table(jobs: Sequence[Job], now: float | None = None) -> str:
    """ATTEMPTS is leases lost / the spec's max_attempts; HEARTBEAT the last one's age."""
    clock = time.time() if now is None else now
    rows = [
        (
            job.id[:8],
            job.job_name,
            job.status_name,
            job.priority,
            job.attempts if job.spec is None else f"{job.attempts}/{job.spec['max_attempts']}",
            job.worker_id,
            fmt_age(job.heartbeat_at, clock),
            job.user,
            fmt_time(job.created_at),
            job.commit_id[:12],
            fmt_command(job.spec),
        )
        for job in jobs
    ]
    headers = ("ID", "NAME", "STATUS", "PRI", "ATTEMPTS", "WORKER", "HEARTBEAT", "USER")
    return table((*headers, "CREATED", "RUN", "COMMAND"), rows, right={3, 4})


def metrics_table(records: Iterable[Metric], with_time: bool = True) -> str:
    return points_table(((r.name, r.step, r.value, r.timestamp) for r in records), with_time)


def points_table(points: Iterable[tuple[str, int, float, int]], with_time: bool = True) -> str:
    """(name, step, value, timestamp) per line, as metrics_table shows records."""
    rows = [
        (name, step, fmt_value(value), fmt_time(timestamp) if with_time else "")
        for name, step, value, timestamp in points
    ]
    headers = ("NAME", "STEP", "VALUE", "TIME") if with_time else ("NAME", "STEP", "VALUE", "")
    return table(headers, rows, right={1, 2})


def dumps(obj: Any) -> str:
    """Compact JSON; non-finite floats must already be strings (see shapes.json_value)."""
    return shapes.dumps(obj)


def metric_json(record: Metric) -> str:
    return dumps(shapes.metric(record))


def columns_json(name: str, columns: Columns) -> list[str]:
    """metric_json of each point of one name's columns, without an object per point."""
    head = f'{{"name":{dumps(name)},"value":'
    return [
        f'{head}{value},"step":{step},"timestamp":{timestamp}}}'
        for value, step, timestamp in zip(
            json_values(columns.value),
            columns.step.tolist(),
            columns.timestamp.tolist(),
            strict=True,
        )
    ]


def emit(text: str, stream: TextIO | None = None) -> None:
    out = sys.stdout if stream is None else stream
    out.write(text)
    if not text.endswith("\n"):
        out.write("\n")
    out.flush()
