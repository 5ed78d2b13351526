"""`fetchml compare`: runs side by side.

Params one row per key and one column per run, rows whose values differ
marked (bold on a terminal, else a leading `*`); then the last, min and max of
every metric per run. Runs up to COMPARE_FULL_MAX records are read whole; a
larger run is downsampled, so its min and max are approximate (marked `~`).
"""

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from typing import Any

from fetchml.protocol.shapes import json_value

from .connection import Client
from .errors import InvalidRequest
from .models import Metric
from .output import dumps, emit, fmt_param, fmt_value, table
from .runcmds import fetch_runs, label, require_summary, run_query
from .runs import RunSummary

COMPARE_FULL_MAX = 200_000
"""A run of up to this many records is read whole; beyond, a downsampled query."""
COMPARE_POINTS = 2000
"""Points per metric of that downsampled query (last is exact; min and max approximate)."""
BOLD, PLAIN = "\x1b[1m", "\x1b[0m"


def _labels(rows: Sequence[RunSummary]) -> list[str]:
    """Column headers of runs: names, with the short ID where names repeat."""
    names = [label(r) for r in rows]
    return [
        n if names.count(n) == 1 else f"{n} ({r.id[:8]})" for n, r in zip(names, rows, strict=True)
    ]


async def compare(client: Client, args: argparse.Namespace) -> int:
    """The RUN arguments, then the runs the filter options select (up to --limit)."""
    ids = list(args.ids)
    query = run_query(args)
    if set(query) - {"order"}:
        found, _ = await fetch_runs(client, query, args.limit)
        ids += [row.id for row in found]
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise InvalidRequest("nothing to compare: give RUNs or a filter (--project, --name...)")
    rows = await asyncio.gather(*(require_summary(client, i) for i in ids))
    stats = await asyncio.gather(*(_stats(client, row) for row in rows))
    params = [{} if r.run is None else r.run.params for r in rows]
    keys = sorted({key for p in params for key in p})
    differ = [key for key in keys if len({_same(p.get(key)) for p in params}) > 1]
    if args.json:
        emit(dumps(_compare_json(rows, params, stats, differ)))
        return 0
    labels = _labels(rows)
    param_rows = [["id", *(r.id[:8] for r in rows)]]
    param_rows += [[key, *(fmt_param(p.get(key)) for p in params)] for key in keys]
    marked = [False] + [key in differ for key in keys]
    text = _marked(table(["PARAM", *labels], param_rows).splitlines(), [False, *marked])
    names = sorted({name for s in stats for name in s[0]})
    metric_rows: list[list[object]] = []
    for name in names:
        for i, stat in enumerate(("last", "min", "max")):
            cells = [_stat_cell(s, name, i) for s in stats]
            metric_rows.append([name if i == 0 else "", stat, *cells])
    right = set(range(2, 2 + len(rows)))
    text += "\n\n" + (
        table(["METRIC", "STAT", *labels], metric_rows, right=right) if names else "(no metrics)"
    )
    if not all(exact for _, exact in stats):
        text += (
            f"\n~ min and max of runs over {COMPARE_FULL_MAX} records come from "
            f"{COMPARE_POINTS} downsampled points per metric"
        )
    emit(text)
    return 0


Stats = tuple[dict[str, tuple[Metric, float, float]], bool]
"""Per metric name: the last record, the min and the max (NaN ignored); whether exact."""


async def _stats(client: Client, row: RunSummary) -> Stats:
    exact = row.metrics_count <= COMPARE_FULL_MAX
    records = await client.query(row.id, max_points=0 if exact else COMPARE_POINTS)
    values: dict[str, list[float]] = {}
    last: dict[str, Metric] = {}
    for record in records:
        last[record.name] = record
        if not math.isnan(record.value):
            values.setdefault(record.name, []).append(record.value)
    out = {}
    for name, record in last.items():
        seen = values.get(name)
        out[name] = (record, min(seen) if seen else math.nan, max(seen) if seen else math.nan)
    return out, exact


def _stat_cell(stats: Stats, name: str, which: int) -> str | None:
    found, exact = stats
    if name not in found:
        return None
    record, low, high = found[name]
    if which == 0:
        return fmt_value(record.value)
    return ("" if exact else "~") + fmt_value(low if which == 1 else high)


def _same(value: object) -> tuple[str, object]:
    """A param value compared as JSON: numbers by value (1 == 1.0), booleans apart."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return (type(value).__name__, value)


def _marked(lines: list[str], marks: list[bool]) -> str:
    """Rows whose values differ: bold on a terminal, else a leading `*`."""
    if sys.stdout.isatty():
        return "\n".join(
            BOLD + line + PLAIN if mark else line for line, mark in zip(lines, marks, strict=True)
        )
    return "\n".join(
        ("* " if mark else "  ") + line for line, mark in zip(lines, marks, strict=True)
    )


def _compare_json(
    rows: Sequence[RunSummary],
    params: Sequence[dict[str, Any]],
    stats: Sequence[Stats],
    differ: list[str],
) -> dict[str, Any]:
    items = []
    for row, p, (found, exact) in zip(rows, params, stats, strict=True):
        metrics = {
            name: {
                "last": json_value(rec.value),
                "step": rec.step,
                "min": json_value(low),
                "max": json_value(high),
            }
            for name, (rec, low, high) in sorted(found.items())
        }
        items.append(
            {"id": row.id, "name": row.name, "params": p, "metrics": metrics, "exact": exact}
        )
    return {"runs": items, "differing_params": differ}
