"""The run commands of `fetchml`: runs, tag, note, and the run part of `show`.

A run is an experiment with a run document (name, project, params, tags,
status...); experiments made the old way have none and show their job name
and "-" for the run's fields.
"""

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from .connection import Client
from .errors import InvalidRequest, NotFound, StorageError
from .models import Metric, metric_to_json
from .output import dumps, emit, fmt_duration, fmt_param, fmt_time, fmt_value, table
from .runs import Run, RunSummary

LIST_PAGE_MAX = 1000
"""LIST_RUNS's largest `limit`."""
RESOLVE_LIMIT = 20
"""How many matches of an ambiguous prefix are named."""
OUTPUT_LINES = 20
"""`show` prints the last this many lines of a run's output."""


def filter_value(text: str) -> str | int | float | bool:
    """A CLI filter value: a JSON string, number or boolean when `text` is one, else the text."""
    try:
        value = json.loads(text, parse_constant=_refuse)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value if isinstance(value, str | int | float | bool) else text


def _refuse(name: str) -> Any:
    raise ValueError(name)


def param_pair(text: str) -> tuple[str, str | int | float | bool]:
    """`--param KEY=VALUE` (argparse type)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, filter_value(value)


def tag_changes(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """`+TAG` and `-TAG` tokens as (added, removed); ValueError names a bad token."""
    added: list[str] = []
    removed: list[str] = []
    for token in tokens:
        sign, tag = token[:1], token[1:]
        if sign not in ("+", "-") or not tag:
            raise ValueError(f"expected +TAG or -TAG, got {token!r}")
        (added if sign == "+" else removed).append(tag)
    both = sorted(set(added) & set(removed))
    if both:
        raise ValueError(f"tag {both[0]!r} both added and removed")
    return list(dict.fromkeys(added)), removed


async def resolve(client: Client, prefix: str, what: str) -> str:
    """The one experiment whose ID starts with `prefix` (LIST_RUNS `id`), else an error
    naming the matches (`what`: the argument's kind, for the message)."""
    page = await client.list_runs_page({"id": prefix, "limit": RESOLVE_LIMIT})
    if page.total == 1 and page.runs:
        return page.runs[0].id
    if page.total == 0:
        raise InvalidRequest(f"no experiment matches {what} prefix {prefix}")
    named = sorted(r.id + (f" ({r.run.name})" if r.run is not None else "") for r in page.runs)
    more = f" and {page.total - len(named)} more" if page.total > len(named) else ""
    raise InvalidRequest(f"{what} prefix {prefix} is ambiguous: {', '.join(named)}{more}")


async def summary(client: Client, run_id: str) -> RunSummary | None:
    """LIST_RUNS's row for one experiment (40 hex), None when there is none."""
    page = await client.list_runs_page({"id": run_id, "limit": 1})
    return page.runs[0] if page.runs else None


async def require_summary(client: Client, run_id: str) -> RunSummary:
    found = await summary(client, run_id)
    if found is None:
        raise NotFound(f"experiment {run_id} not found")
    return found


def summary_json(row: RunSummary) -> dict[str, Any]:
    """A LIST_RUNS summary as the daemon sends it."""
    meta = {"commit_id": row.id, "timestamp": row.timestamp, "job_name": row.job_name}
    return {
        "id": row.id,
        "metrics_count": row.metrics_count,
        "metadata": {**meta, "user": row.user},
        "run": None if row.run is None else row.run.to_json(),
    }


def duration(run: Run) -> int | None:
    """Seconds from start to end: the end time, else now while running, else the last
    heartbeat (a crashed run); None before it started."""
    if run.started_at is None:
        return None
    end = run.ended_at
    if end is None:
        end = int(time.time()) if run.status == "running" else run.heartbeat_at
    return None if end is None else end - run.started_at


def label(row: RunSummary) -> str:
    return row.name if row.run is not None or row.job_name else row.id[:8]


def run_query(args: argparse.Namespace) -> dict[str, Any]:
    """The LIST_RUNS filter of the filter options (`runs`, `compare`), without limit."""
    query: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("user", "name", "project", "status", "tag")
        if getattr(args, key) is not None
    }
    if args.param:
        query["params"] = dict(args.param)
    if args.oldest:
        query["order"] = "oldest"
    return query


async def fetch_runs(
    client: Client, query: dict[str, Any], limit: int
) -> tuple[list[RunSummary], int]:
    """The first `limit` matches of `query` (page after page) and the number of matches."""
    rows: list[RunSummary] = []
    total = offset = 0
    while len(rows) < limit:
        size = min(limit - len(rows), LIST_PAGE_MAX)
        page = await client.list_runs_page(query | {"limit": size, "offset": offset})
        rows.extend(page.runs)
        total = page.total
        if page.next_offset is None or not page.runs:
            break
        offset = page.next_offset
    return rows, total


async def runs(client: Client, args: argparse.Namespace) -> int:
    rows, total = await fetch_runs(client, run_query(args), args.limit)
    if args.only_ids:
        if rows:
            emit("\n".join(row.id for row in rows))
        return 0
    latest = await _latest(client, rows, args.metric) if args.metric else [None] * len(rows)
    if args.json:
        items = [summary_json(row) for row in rows]
        if args.metric:
            for item, metric in zip(items, latest, strict=True):
                item["latest"] = None if metric is None else metric_to_json(metric)
        emit(dumps(items))
        return 0
    cols = [c for c in args.param_cols.split(",") if c] if args.param_cols else []
    headers = ["ID", "NAME", "PROJECT", "STATUS", "USER", "STARTED", "DURATION", *cols]
    headers += [args.metric] if args.metric else []
    lines = [
        _runs_row(r, cols) + _metric_cell(m, args.metric) for r, m in zip(rows, latest, strict=True)
    ]
    right = set(range(6, len(headers)))
    text = table(headers, lines, right=right) if rows else "(no matching runs)"
    if total > len(rows):
        text += f"\n{len(rows)} of {total} runs shown (--limit for more)"
    emit(text)
    return 0


def _runs_row(row: RunSummary, cols: Sequence[str]) -> list[object]:
    run = row.run
    if run is None:
        blank: list[object] = [None] * len(cols)
        return [row.id[:8], row.job_name or None, None, None, row.user, None, None, *blank]
    params = [fmt_param(run.params.get(c)) for c in cols]
    started = fmt_time(run.started_at)
    took = fmt_duration(duration(run))
    return [row.id[:8], run.name, run.project, run.status, row.user, started, took, *params]


def _metric_cell(metric: Metric | None, name: str) -> list[object]:
    if not name:
        return []
    return [None if metric is None else fmt_value(metric.value)]


async def _latest(client: Client, rows: Sequence[RunSummary], name: str) -> list[Metric | None]:
    """The latest value of `name` in each row (None when it has none), pipelined."""

    async def one(row: RunSummary) -> Metric | None:
        if row.metrics_count == 0:
            return None
        try:
            return (await client.latest(row.id, name)).get(name)
        except (NotFound, StorageError) as exc:  # pruned since the listing, or damaged
            emit(f"warning: {row.id[:8]}: {exc.message}", sys.stderr)
            return None

    return list(await asyncio.gather(*(one(row) for row in rows)))


def run_lines(run: Run) -> list[str]:
    """`show`'s lines for a run document (after the experiment's own)."""
    host = run.host or "-"
    if run.pid is not None:
        host += f" (pid {run.pid})"
    lines = [
        f"name     {run.name}",
        f"project  {run.project or '-'}",
        f"status   {run.status or '-'}",
        f"git      {run.git_commit or '-'}",
        f"host     {host}",
        f"started  {fmt_time(run.started_at)}",
        f"ended    {fmt_time(run.ended_at)}",
        f"duration {fmt_duration(duration(run))}",
        f"tags     {', '.join(run.tags) or '-'}",
    ]
    notes = run.notes.splitlines() or ["-"]
    lines += [f"notes    {notes[0]}", *(f"         {line}" for line in notes[1:])]
    if run.params:
        rows = [(key, fmt_param(value)) for key, value in sorted(run.params.items())]
        lines += ["params", *("  " + line for line in table(("", ""), rows).splitlines()[1:])]
    return lines


def output_tail(run: Run) -> str:
    """The last OUTPUT_LINES lines of the run's output, under a heading; "" without output."""
    lines = run.output.splitlines()
    if not lines:
        return ""
    shown = lines[-OUTPUT_LINES:]
    head = f"output (last {len(shown)} of {len(lines)} lines)"
    return "\n".join([head, *("  " + line for line in shown)])


async def tag(client: Client, args: argparse.Namespace) -> int:
    """Add (+TAG) and remove (-TAG) tags: reads the tags, sends the whole new list."""
    added, removed = args.changes
    row = await require_summary(client, args.run)
    tags = [] if row.run is None else list(row.run.tags)
    new = [t for t in tags if t not in removed] + [t for t in added if t not in tags]
    if new != tags:
        tags = list((await client.update_run(args.run, {"tags": new})).tags)
    if args.json:
        emit(dumps({"id": args.run, "tags": tags}))
    else:
        emit(f"{args.run[:8]} {label(row)}: tags {', '.join(tags) or '(none)'}")
    return 0


async def note(client: Client, args: argparse.Namespace) -> int:
    """Replace the run's notes ("" clears them)."""
    run = await client.update_run(args.run, {"notes": args.text})
    if args.json:
        emit(dumps({"id": args.run, "notes": run.notes}))
    else:
        emit(f"{args.run[:8]} {run.name}: notes {'set' if run.notes else 'cleared'}")
    return 0
