"""The `fetchml` subcommands: each takes a connected Client and the parsed arguments."""

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

from fetchml.protocol.shapes import json_value

from . import runcmds
from .columns import Columns
from .connection import Client
from .errors import InvalidRequest
from .export import ProgressBar, export_metrics, guess_format
from .extras import load_optional
from .live import LiveView
from .models import Metric, metric_to_json
from .output import (
    columns_json,
    dumps,
    emit,
    fmt_time,
    fmt_value,
    metric_json,
    metrics_table,
    points_table,
    table,
)
from .watch import WatchOptions

PROGRESS_MIN_RECORDS = 100_000
WAIT_POLL_S = 1.0
"""`watch --wait`: how often to ask again for an experiment that does not exist yet."""


async def resolve_commit(client: Client, commit: str, what: str = "commit") -> str:
    """A full 40-hex ID as is; a prefix: the one experiment (or run) whose ID it starts."""
    if len(commit) == 40:
        return commit
    return await runcmds.resolve(client, commit, what)


async def prune(client: Client, args: argparse.Namespace) -> int:
    """Preview, print, ask (unless --yes), prune, print what was actually removed."""
    which = {"keep": args.keep, "older_than_days": args.older_than}
    victims = await client.prune_preview(**which)
    if args.dry_run:
        emit(dumps({"would_prune": victims}) if args.json else _listing("would remove", victims))
        return 0
    if victims and not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise InvalidRequest("stdin is not a terminal: pass --yes to prune without asking")
        emit(_listing("will remove", victims), sys.stderr if args.json else None)
        if not await _confirm(f"remove these {len(victims)} experiment(s)? [y/N] "):
            raise InvalidRequest("not confirmed: nothing removed")
    pruned = await client.prune(**which) if victims else []
    if args.json:
        emit(dumps({"pruned": pruned}))
    else:
        emit("\n".join([f"pruned {len(pruned)} experiment(s)", *pruned]))
    if sorted(pruned) != sorted(victims):
        emit(
            "note: the experiments changed since the preview; the list above is what was removed",
            sys.stderr,
        )
    return 0


def _listing(verb: str, commits: list[str]) -> str:
    return "\n".join([f"{verb} {len(commits)} experiment(s)" + (":" if commits else ""), *commits])


async def _confirm(question: str) -> bool:
    """Ask on stderr, read one line from the terminal on stdin; True for y or yes.
    The event loop keeps running meanwhile (the connection answers pings; Ctrl-C works)."""
    sys.stderr.write(question)
    sys.stderr.flush()
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()
    fd = sys.stdin.fileno()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    answer = os.read(fd, 1024).decode(errors="replace").strip().lower()
    return answer in ("y", "yes")


async def ls(client: Client, args: argparse.Namespace) -> int:
    rows = await client.list_experiments()
    if args.json:
        emit(dumps([row.to_json() for row in rows]))
        return 0
    emit(
        table(
            ("COMMIT", "JOB", "USER", "CREATED", "METRICS"),
            [
                (
                    r.commit_id,
                    f"damaged: {r.damaged}" if r.damaged else r.job_name,
                    r.user,
                    fmt_time(r.timestamp),
                    r.metrics_count,
                )
                for r in rows
            ],
            right={4},
        )
    )
    return 0


async def show(client: Client, args: argparse.Namespace) -> int:
    experiment, latest, row = await asyncio.gather(
        client.get_experiment(args.commit),
        client.latest(args.commit),
        runcmds.summary(client, args.commit),
    )
    run = None if row is None else row.run
    if args.json:
        doc: dict[str, Any] = experiment.to_json()
        del doc["metrics"], doc["metrics_truncated"]
        doc["latest"] = {name: metric_to_json(m) for name, m in latest.items()}
        doc["run"] = None if run is None else run.to_json()
        emit(dumps(doc))
        return 0
    head = [
        f"commit   {experiment.commit_id}",
        f"job      {experiment.job_name or '-'}",
        f"user     {experiment.user or '-'}",
        f"created  {fmt_time(experiment.timestamp)}",
        f"records  {experiment.metrics_count}",
    ]
    parts = ["\n".join(head + ([] if run is None else runcmds.run_lines(run)))]
    parts.append(metrics_table(latest.values()) if latest else "(no metrics)")
    if run is not None and run.output:
        parts.append(runcmds.output_tail(run))
    emit("\n\n".join(parts))
    return 0


async def log(client: Client, args: argparse.Namespace) -> int:
    if args.create:
        await client.create_experiment(args.commit, exist_ok=True)
    await client.log_metric(args.commit, args.name, args.value, args.step)
    if args.json:
        emit(dumps({"name": args.name, "step": args.step, "value": json_value(args.value)}))
    else:
        emit(f"logged {args.name}={fmt_value(args.value)} at step {args.step}")
    return 0


async def _record_pages(
    client: Client, args: argparse.Namespace, options: dict[str, Any]
) -> AsyncIterator[Sequence[Metric]]:
    if args.points:
        yield await client.query(args.commit, max_points=args.points, **options)
        return
    async for page in client.query_pages(args.commit, **options):
        yield page.records


async def query(client: Client, args: argparse.Namespace) -> int:
    step_from, step_to = args.steps
    if args.name:  # one name: numpy columns, no object per point
        return await _query_columns(client, args, step_from, step_to)
    options: dict[str, Any] = {"name": args.name, "step_from": step_from, "step_to": step_to}
    if args.json:  # a JSON array, streamed page by page
        out = sys.stdout
        out.write("[")
        sep = ""
        async for records in _record_pages(client, args, options):
            for record in records:
                out.write(sep + metric_json(record))
                sep = ",\n"
        out.write("]\n")
        out.flush()
        return 0
    found: list[Metric] = []
    async for records in _record_pages(client, args, options):
        found.extend(records)
    emit(metrics_table(found) if found else "(no matching metrics)")
    return 0


async def _column_pages(
    client: Client, args: argparse.Namespace, step_from: int, step_to: int
) -> AsyncIterator[Columns]:
    steps = {"start_step": step_from, "end_step": step_to}
    if args.points:
        yield await client.query_columns(args.commit, args.name, max_points=args.points, **steps)
        return
    async for _, columns in client.query_column_pages(args.commit, args.name, **steps):
        yield columns


async def _query_columns(
    client: Client, args: argparse.Namespace, step_from: int, step_to: int
) -> int:
    """`query --name`: the same output as for records, printed from columns."""
    pages = _column_pages(client, args, step_from, step_to)
    if args.json:  # a JSON array, streamed page by page
        out = sys.stdout
        out.write("[")
        sep = ""
        async for columns in pages:
            if len(columns):
                out.write(sep + ",\n".join(columns_json(args.name, columns)))
                sep = ",\n"
        out.write("]\n")
        out.flush()
        return 0
    found = [columns async for columns in pages]
    if not any(len(columns) for columns in found):
        emit("(no matching metrics)")
        return 0
    points = (
        point
        for columns in found
        for point in zip(
            repeat(args.name),
            columns.step.tolist(),
            columns.value.tolist(),
            columns.timestamp.tolist(),
            strict=False,
        )
    )
    emit(points_table(points))
    return 0


async def watch(client: Client, args: argparse.Namespace) -> int:
    live = None if args.json else LiveView(args.commit, args.plot, args.interval)
    shown = 0
    options = WatchOptions(wait_for_experiment=WAIT_POLL_S if args.wait else 0.0)
    stream = client.watch(args.commit, args.from_index, args.name, options=options)
    async with stream:
        if live is not None:
            live.draw()
        try:
            async for batch in stream:
                records = batch.records
                if args.exit_after:  # exactly that many: the last batch is cut
                    records = records[: args.exit_after - shown]
                shown += len(records)
                done = bool(args.exit_after) and shown >= args.exit_after
                if live is None:
                    emit("\n".join(metric_json(r) for r in records))
                else:
                    live.add(records)
                    live.update(final=done)
                if done:
                    break
        finally:
            if live is not None:
                live.cancel()
    return 0


async def export(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.output)
    fmt = args.format or guess_format(path)
    if fmt is None:
        raise InvalidRequest(f"cannot tell the format of {path}: pass --format csv|jsonl|parquet")
    if fmt == "parquet":
        load_optional("pyarrow", "parquet", "Parquet export")
    ids = list(dict.fromkeys(args.ids))
    progress = None
    sizes: list[int] = []
    if args.progress is not False:
        rows = await asyncio.gather(*(runcmds.summary(client, i) for i in ids))
        sizes = [0 if row is None else row.metrics_count for row in rows]
        if args.progress or (sys.stderr.isatty() and sum(sizes) >= PROGRESS_MIN_RECORDS):
            progress = ProgressBar(sys.stderr, sum(sizes))
    step_from, step_to = args.steps
    count = await export_metrics(
        client,
        ids,
        path,
        fmt,
        name=args.name,
        step_from=step_from,
        step_to=step_to,
        progress=progress,
        sizes=sizes,
    )
    emit(
        dumps({"records": count, "file": str(path)})
        if args.json
        else f"wrote {count} records to {path}"
    )
    return 0


async def whoami(client: Client, args: argparse.Namespace) -> int:
    me = await client.whoami()
    if args.json:
        emit(dumps(me.to_json()))
    else:
        scope = (
            f"scope {me.write_scope}"
            if me.read_scope == me.write_scope
            else f"read scope {me.read_scope}, write scope {me.write_scope}"
        )
        emit(f"{me.user} (role {me.role}, {scope}): {', '.join(me.permissions)}")
    return 0
