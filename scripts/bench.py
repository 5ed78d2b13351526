"""Benchmark of the fetchml daemon, each figure next to a baseline measured in the same run.

Everything runs in separate processes on 127.0.0.1: the daemon (`python -m
fetchml.server serve`, one per durability), the baseline server (scripts/bench_echo.py:
a bare websockets server answering every message with 10 bytes) and the load
generator (scripts/bench_load.py), which drives both the same way with the same
pre-encoded frames. The read baselines run in this process on the same
metrics.bin. Prints a table (ratio = fetchml figure / baseline figure, target,
PASS or MISS) and writes it as JSON. The figures are declared once, in
scripts/bench_figures.py; the processes are run by scripts/bench_servers.py and the
load generator's results are scripts/bench_records.py types. The full run ends with
the cluster figures (Debian's redis-server and three daemons over one data directory);
--quick leaves them out.

Exits non-zero only when the daemon misbehaves: an ERROR response, a refused or
dropped connection, a crash, an error in its log, or an experiment that does not
hold exactly the records acknowledged. Speed never changes the exit status.

    scripts/bench [--quick] [--json bench-results.json] [--dir DIR]
    scripts/bench --cluster    # only the cluster figures (scripts/bench_cluster.py)
    scripts/bench --large [--large-records 100000000] [--large-small 20000]
    scripts/bench --table [bench-results.json]    # the README's markdown table
"""

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import bench_cluster
import bench_large
import bench_large_data
import bench_logger
import bench_onecall
from bench_figures import BY_KEY, Row, console_table, markdown_table, rows_from_json
from bench_records import (
    Idle,
    Paced,
    Pass,
    Percentiles,
    Pipeline,
    Reads,
    Result,
    Watch,
    Watchers,
)
from bench_servers import (
    KEY,
    KEY_HASH,
    ROOT,
    TIMESTAMP,
    Bench,
    Server,
    Sizes,
    commit,
    raise_open_file_limit,
)
from bench_workers import IDLE_WORKERS, idle_workers
from websockets.sync.client import connect
from websockets.version import version as websockets_version

from fetchml.client import Client, FetchmlError
from fetchml.protocol import runs
from fetchml.protocol.metrics import encode_record, iter_records
from fetchml.protocol.requests import ListRuns, encode_request
from fetchml.protocol.responses import Data, decode_response
from fetchml.server.runs import RECHECK_S
from tests.support.experiments import make_experiment, meta_bytes

LATENCY_RATE = 10_000
"""LOG_METRIC messages per second in the ack-latency runs."""
BATCH = 1_000
STREAM_BATCH = 100
"""Metrics per LOG_METRICS in the 100-connection, watch and watcher-cost runs."""
STREAMS = 100
AT_ROUNDS = 2
"""LOG_METRICS and LOG_METRICS_AT runs alternate this many times; each keeps its best."""
SINGLE_WINDOW = 1_000
BATCH_WINDOW = 100
STREAM_WINDOW = 16
"""Unanswered requests per connection in the pipelined runs (single, batched, streams)."""
WATCH_RATE = 50
"""LOG_METRICS messages per second while watchers measure push latency."""
WATCH_HISTORY = 10_000
"""Records already in a watched experiment: watchers start at this index."""
FEW_WATCHERS = 10
"""Watchers in the second watcher-cost figure (the first has Sizes.watchers)."""
LTTB_POINTS = 1_000
IDLE_SETTLE_S = 1.0
READ_NAMES = list(bench_large_data.NAMES)  # the same ten names in every read figure


FULL = Sizes(
    single_messages=200_000,
    latency_seconds=5,
    batch_messages=2_000,
    stream_seconds=5,
    read_records=1_000_000,
    lttb_repeat=3,
    watchers=100,
    watch_seconds=5,
    ingest_seconds=3,
    idle_connections=10_000,
    runs=20_000,
    worker_seconds=60,
    worker_ramp_seconds=30,
    cluster_seconds=5,
    cluster_messages=1_000,
)
QUICK = Sizes(
    single_messages=20_000,
    latency_seconds=1,
    batch_messages=200,
    stream_seconds=1,
    read_records=200_000,
    lttb_repeat=1,
    watchers=20,
    watch_seconds=1,
    ingest_seconds=1,
    idle_connections=1_000,
    runs=2_000,
    worker_seconds=8,
    worker_ramp_seconds=0,
    cluster_seconds=1,
    cluster_messages=100,
)


def many_names_records(count: int) -> bytes:
    """`count` records cycling through READ_NAMES, ten per step."""
    names = [n.encode() for n in READ_NAMES]
    return b"".join(
        encode_record(TIMESTAMP + i // 1000, i // 10, math.sin(i), names[i % 10])
        for i in range(count)
    )


def one_series_records(count: int) -> bytes:
    """`count` points of one noisy, falling "loss" curve, one per step."""
    return b"".join(
        encode_record(TIMESTAMP + i // 1000, i, 1 / (1 + i / 1000) + 0.05 * math.sin(i), b"loss")
        for i in range(count)
    )


def pct(percentiles: Percentiles | None, which: str) -> float | None:
    return None if percentiles is None else float(getattr(percentiles, which))


def detail(result: Result | None) -> dict[str, Any] | None:
    return None if result is None else asdict(result)


# -- figures: ingest -----------------------------------------------------------------------------


def single_metric_ingest(b: Bench) -> list[Row]:
    """LOG_METRIC, one metric per message, pipelined on one connection."""
    options = dict(
        commits=commit("single"),
        per_message=1,
        messages=b.sizes.single_messages,
        window=SINGLE_WINDOW,
    )
    echo = b.load(Pipeline, b.echo, **options)
    daemon = b.load(Pipeline, b.write, **options)
    b.verify(b.write, {"single": daemon.acked() if daemon else 0})
    b.details["single_metric"] = {"echo": detail(echo), "write": detail(daemon)}
    return [
        Row(
            BY_KEY["single"],
            daemon.messages_per_second if daemon else None,
            echo.messages_per_second if echo else None,
        )
    ]


ONECALL = ROOT / "scripts" / "bench_onecall.py"
ONECALL_ROUNDS = 2
"""One-at-a-time runs alternate this many times (bare, client); each keeps its best."""


def onecall_calls(sizes: Sizes) -> int:
    """Calls per one-at-a-time run: 10,000 in the full run, 2,000 in the quick one."""
    return max(2_000, sizes.single_messages // 20)


def one_at_a_time(b: Bench) -> list[Row]:
    """LOG_METRIC one call at a time against the write daemon, awaited (Client.log_metric)
    and blocking (SyncClient.log_metric), each beside a bare websockets client of its kind
    (asyncio, sync) sending a same-sized message to the echo server; each client in its own
    process (scripts/bench_onecall.py), alternating, best of each."""
    calls = onecall_calls(b.sizes)
    pairs = {"onecall": ("client", "bare"), "sync": ("sync", "bare-sync")}
    best: dict[str, float] = {}
    runs: dict[str, list[float]] = b.details.setdefault("onecall", {})
    for _ in range(ONECALL_ROUNDS):
        for figure, (mine, theirs) in pairs.items():
            for mode, server in ((theirs, b.echo), (mine, b.write)):
                argv = [sys.executable, str(ONECALL), mode, server.url, "--calls", str(calls)]
                argv += ["--key", KEY, "--commit", commit(figure)]
                done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
                b.check_alive(server)
                if done.returncode != 0:
                    b.errors.append(f"one at a time, {mode}: {done.stderr[-2000:]}")
                    return [Row(BY_KEY[key], None, None) for key in pairs]
                rate = json.loads(done.stdout.splitlines()[-1])["calls_per_second"]
                runs.setdefault(mode, []).append(rate)
                best[mode] = max(best.get(mode, 0.0), rate)
    b.verify(b.write, {key: ONECALL_ROUNDS * (calls + bench_onecall.WARMUP) for key in pairs})
    return [Row(BY_KEY[key], best[mine], best[theirs]) for key, (mine, theirs) in pairs.items()]


def ack_latency(b: Bench) -> list[Row]:
    """LOG_METRIC request-to-ack latency at a fixed rate, durability write and fsync."""
    options = dict(
        commits=commit("latency"),
        per_message=1,
        rate=LATENCY_RATE,
        seconds=b.sizes.latency_seconds,
    )
    echo = b.load(Paced, b.echo, **options)
    b.details["ack_latency"] = {"echo": detail(echo)}
    rows = []
    for server in (b.write, b.fsync):
        os.sync()  # the figures before leave dirty pages: their writeback is not this one's
        daemon = b.load(Paced, server, **options)
        b.verify(server, {"latency": daemon.ok if daemon else 0})
        b.details["ack_latency"][server.name] = detail(daemon)
        for percentile in ("p50", "p99"):
            rows.append(
                Row(
                    BY_KEY[f"ack_{percentile}_{server.name}"],
                    pct(daemon.latency_ms if daemon else None, percentile),
                    pct(echo.latency_ms if echo else None, percentile),
                )
            )
    return rows


def batched_ingest(b: Bench) -> list[Row]:
    """LOG_METRICS of 1,000 metrics, pipelined on one connection, write and fsync."""
    options = dict(
        commits=commit("batch"),
        per_message=BATCH,
        messages=b.sizes.batch_messages,
        window=BATCH_WINDOW,
    )
    echo = b.load(Pipeline, b.echo, **options)
    b.details["batched"] = {"echo": detail(echo)}
    rows = []
    for server in (b.write, b.fsync):
        daemon = b.load(Pipeline, server, **options)
        b.verify(server, {"batch": daemon.acked() if daemon else 0})
        b.details["batched"][server.name] = detail(daemon)
        rows.append(
            Row(
                BY_KEY[f"batch_{server.name}"],
                daemon.metrics_per_second if daemon else None,
                echo.metrics_per_second if echo else None,
            )
        )
    return rows


def client_timestamps(b: Bench) -> list[Row]:
    """LOG_METRICS_AT against LOG_METRICS: the same points and window, alternating runs on
    the write daemon, the best of each."""
    options = dict(per_message=BATCH, messages=b.sizes.batch_messages, window=BATCH_WINDOW)
    best: dict[str, float] = {}
    acked: dict[str, int] = {"at-plain": 0, "at-client": 0}
    b.details["client_timestamps"] = []
    for _ in range(AT_ROUNDS):
        for label, at in (("at-plain", 0), ("at-client", 1)):
            result = b.load(Pipeline, b.write, commits=commit(label), at=at, **options)
            b.details["client_timestamps"].append({label: detail(result)})
            if result:
                acked[label] += result.acked()
                best[label] = max(best.get(label, 0.0), result.metrics_per_second or 0.0)
    b.verify(b.write, acked)
    return [Row(BY_KEY["batch_at"], best.get("at-client"), best.get("at-plain"))]


def metric_logger(b: Bench) -> list[Row]:
    """MetricLogger end to end, log() per call, and log() + flush() one at a time (in
    processes of their own, scripts/bench_logger.py), each beside its same-run baseline."""
    return bench_logger.figures(b, logger_sizes(b.sizes))


def logger_sizes(sizes: Sizes) -> bench_logger.LoggerSizes:
    return bench_logger.QUICK if sizes is QUICK else bench_logger.FULL


def many_connections(b: Bench) -> list[Row]:
    """STREAMS connections, each LOG_METRICS to its own experiment, all at once."""
    labels = [f"stream-{i}" for i in range(STREAMS)]
    options = dict(
        commits=",".join(commit(label) for label in labels),
        per_message=STREAM_BATCH,
        seconds=b.sizes.stream_seconds,
        window=STREAM_WINDOW,
        distinct_frames=10,
    )
    echo = b.load(Pipeline, b.echo, **options)
    daemon = b.load(Pipeline, b.write, **options)
    b.verify(b.write, {label: daemon.acked(i) if daemon else 0 for i, label in enumerate(labels)})
    b.details["many_connections"] = {"echo": detail(echo), "write": detail(daemon)}
    return [
        Row(
            BY_KEY["streams"],
            daemon.metrics_per_second if daemon else None,
            echo.metrics_per_second if echo else None,
        ),
        Row(
            BY_KEY["streams_fairness"],
            daemon.fairness if daemon else None,
            echo.fairness if echo else None,
        ),
    ]


# -- figures: reads -----------------------------------------------------------------------------


def plain_read(path: Path) -> list[Any]:
    """The read baseline: plain file read, then protocol.records.iter_records."""
    return [record for _, record in iter_records(path.read_bytes())]


def plain_count(path: Path) -> int:
    return len(iter_records(path.read_bytes()))


def plain_latest(path: Path) -> dict[str, tuple[int, float]]:
    """name -> (step, value) of its last record."""
    return {r.name: (r.step, r.value) for r in plain_read(path)}


def plain_lttb(points: list[tuple[int, float]], threshold: int) -> list[tuple[int, float]]:
    """Largest-Triangle-Three-Buckets (Steinarsson 2013), x = step, y = value."""
    n = len(points)
    if threshold >= n:
        return points
    every = (n - 2) / (threshold - 2)
    chosen = [points[0]]
    a = 0
    for i in range(threshold - 2):
        avg_start = int((i + 1) * every) + 1
        avg_end = min(int((i + 2) * every) + 1, n)
        avg_x = sum(p[0] for p in points[avg_start:avg_end]) / (avg_end - avg_start)
        avg_y = sum(p[1] for p in points[avg_start:avg_end]) / (avg_end - avg_start)
        ax, ay = points[a]
        best, best_area = -1, -1.0
        for j in range(int(i * every) + 1, int((i + 1) * every) + 1):
            x, y = points[j]
            area = abs((ax - avg_x) * (y - ay) - (ax - x) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        chosen.append(points[best])
        a = best
    chosen.append(points[-1])
    return chosen


def plain_downsample(path: Path) -> list[tuple[int, float]]:
    """The LTTB baseline: read, parse, then LTTB over the "loss" points."""
    points = [(r.step, r.value) for r in plain_read(path) if r.name == "loss"]
    return plain_lttb(points, LTTB_POINTS)


def timed(function: Any, *args: Any) -> tuple[Any, float]:
    """(result, seconds) of one call."""
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def reads(b: Bench) -> list[Row]:
    """QUERY_METRICS on pre-built experiments against plain Python on the same files."""
    daemon = b.load(
        Reads,
        b.write,
        many=commit("reads-many"),
        one=commit("reads-one"),
        name="loss",
        points=LTTB_POINTS,
        repeat=b.sizes.lttb_repeat,
    )
    if daemon:
        b.details["reads"] = {k: v for k, v in asdict(daemon).items() if not k.endswith("_points")}
    files = b.tmp / "write" / "experiments"
    many = files / commit("reads-many") / "metrics.bin"
    one = files / commit("reads-one") / "metrics.bin"
    parsed, parse_s = timed(plain_count, many)
    latest, latest_s = timed(plain_latest, many)
    series, lttb_s = timed(plain_downsample, one)
    if daemon:
        check_reads(b, daemon, b.sizes.read_records, latest, series)
    return [
        Row(
            BY_KEY["paging_first"],
            daemon.first_pass.records_per_second if daemon else None,
            parsed / parse_s,
        ),
        Row(
            BY_KEY["paging_again"],
            daemon.second_pass.records_per_second if daemon else None,
            parsed / parse_s,
        ),
        Row(
            BY_KEY["columns"],
            client_columns(b) if daemon else None,
            daemon.second_pass.records_per_second if daemon else None,
        ),
        Row(BY_KEY["lttb"], daemon.lttb_ms if daemon else None, lttb_s * 1000),
        Row(BY_KEY["latest"], daemon.latest_ms if daemon else None, latest_s * 1000),
    ]


def client_columns(b: Bench, repeat: int = 3) -> float | None:
    """Points/s of the real Client's query_columns over the "loss" points of reads-one
    (read_records of them), median of `repeat`."""

    async def rates() -> list[float]:
        out = []
        async with Client.connect(b.write.url, KEY) as client:
            for _ in range(repeat):
                started = time.perf_counter()
                columns = await client.query_columns(commit("reads-one"), "loss")
                out.append(len(columns) / (time.perf_counter() - started))
                if len(columns) != b.sizes.read_records:
                    b.errors.append(f"reads: query_columns returned {len(columns)} points")
        return out

    try:
        return statistics.median(asyncio.run(rates()))
    except FetchmlError as exc:
        b.errors.append(f"reads: query_columns failed: {exc}")
        return None


def check_reads(
    b: Bench,
    daemon: Reads,
    n: int,
    latest: dict[str, tuple[int, float]],
    series: list[tuple[int, float]],
) -> None:
    """Counts must match; LTTB picks that differ from the reference are only noted."""
    passes: tuple[tuple[str, Pass], ...] = (
        ("first_pass", daemon.first_pass),
        ("second_pass", daemon.second_pass),
    )
    for key, run in passes:
        if run.records != n:
            b.errors.append(f"reads: paging ({key}) returned {run.records} records of {n}")
    served_latest = {name: (step, value) for name, step, value in daemon.latest_points}
    if served_latest != latest:
        b.errors.append(f"reads: latest per name {served_latest} differs from the file's {latest}")
    served = [(step, value) for _, step, value in daemon.lttb_points]
    if len(served) != LTTB_POINTS:
        b.errors.append(f"reads: LTTB returned {len(served)} points, not {LTTB_POINTS}")
    elif served != series:
        differ = sum(1 for s, p in zip(served, series, strict=True) if s != p)
        b.notes.append(f"LTTB: {differ} of {LTTB_POINTS} points differ from the reference LTTB")


# -- figures: watch -----------------------------------------------------------------------------


def push_latency(b: Bench) -> list[Row]:
    """Watchers on one experiment under a paced writer: each write's send to its push.
    Baseline: the round trip of the same frames at the same rate through the echo server."""
    options = dict(
        commits=commit("watch"),
        per_message=STREAM_BATCH,
        rate=WATCH_RATE,
        seconds=b.sizes.watch_seconds,
    )
    echo = b.load(Paced, b.echo, **options)
    daemon = b.load(Watch, b.write, watchers=b.sizes.watchers, from_index=WATCH_HISTORY, **options)
    written = daemon.ok * STREAM_BATCH if daemon else 0
    b.verify(b.write, {"watch": WATCH_HISTORY + written})
    if daemon and daemon.silent:
        b.errors.append(f"write: {daemon.silent} of {daemon.watchers} watchers got no push")
    b.details["push_latency"] = {"echo": detail(echo), "write": detail(daemon)}
    return [
        Row(
            BY_KEY[f"push_{percentile}"],
            pct(daemon.push_latency_ms if daemon else None, percentile),
            pct(echo.latency_ms if echo else None, percentile),
        )
        for percentile in ("p50", "p99")
    ]


def watcher_cost(b: Bench) -> list[Row]:
    """Max-speed LOG_METRICS ingest with and without caught-up watchers on the experiment:
    b.sizes.watchers of them, then FEW_WATCHERS; each against its own run without."""
    return [
        ingest_with_watchers(b, "watched_ingest", b.sizes.watchers, ""),
        ingest_with_watchers(b, "watched_ingest_few", FEW_WATCHERS, "-few"),
    ]


def ingest_with_watchers(b: Bench, figure: str, count: int, suffix: str) -> Row:
    options = dict(per_message=STREAM_BATCH, seconds=b.sizes.ingest_seconds, window=BATCH_WINDOW)
    alone_label, watched_label = f"ingest-alone{suffix}", f"ingest-watched{suffix}"
    cpu = b.write.cpu_seconds()
    alone = b.load(Pipeline, b.write, commits=commit(alone_label), **options)
    alone_cpu = b.write.cpu_seconds() - cpu
    b.verify(b.write, {alone_label: WATCH_HISTORY + (alone.acked() if alone else 0)})
    watchers = b.start_load(
        Watchers,
        b.write,
        commits=commit(watched_label),
        watchers=count,
        from_index=WATCH_HISTORY,
    )
    try:
        cpu = b.write.cpu_seconds()
        watched = b.load(Pipeline, b.write, commits=commit(watched_label), **options)
        watched_cpu = b.write.cpu_seconds() - cpu
    finally:
        followed = b.finish_load(watchers, Watchers, b.write)
    watched_acked = watched.acked() if watched else 0
    b.verify(b.write, {watched_label: WATCH_HISTORY + watched_acked})
    b.details[f"watcher_cost{suffix}"] = {
        "alone": {"load": detail(alone), "daemon_cpu_s": alone_cpu},
        "watched": {"load": detail(watched), "daemon_cpu_s": watched_cpu},
        "watchers": detail(followed),
    }
    b.notes.append(
        f"{count} watchers: daemon CPU per million metrics {cpu_per_million(alone, alone_cpu)} s "
        f"alone, {cpu_per_million(watched, watched_cpu)} s with watchers (their process "
        "competes for the same CPUs)"
    )
    if followed:
        share = followed.records / (count * watched_acked) if watched_acked else 0.0
        b.notes.append(
            f"{count} watchers received {followed.records:,} records in {followed.pushes:,} "
            f"pushes while {watched_acked:,} were written ({share:.0%} of it each; what "
            "is still in flight when ingest stops is not counted); closed as too slow "
            f"{followed.slow_closes} times (they resume). Each push's bytes were all "
            "received and its count and next checked (no gap, no duplicate)"
        )
    return Row(
        BY_KEY[figure],
        watched.metrics_per_second if watched else None,
        alone.metrics_per_second if alone else None,
    )


def cpu_per_million(result: Pipeline | None, cpu_seconds: float) -> str:
    metrics = result.acked() if result else 0
    return f"{cpu_seconds / metrics * 1e6:.2f}" if metrics else "n/a"


# -- figures: run listings -------------------------------------------------------------------------

RUNS_QUERY = {"project": "p3", "params": {"lr": 0.01}, "offset": 10, "limit": 100}
"""Matches a thirtieth of the runs; the page is rows 10-109 of them."""
RUNS_REPEAT = 5


def write_runs(base: Path, count: int) -> None:
    """`count` experiments with run documents of ~300 bytes (project, status, params, tags)."""
    for i in range(count):
        cid = commit(f"run-{i}")
        make_experiment(base, cid, None, meta_bytes(cid, user="bench", timestamp=TIMESTAMP + i))
        patch = {
            "name": f"run-{i}",
            "project": f"p{i % 10}",
            "status": ("running", "finished", "failed")[i % 3],
            "params": {"lr": (0.1, 0.01, 0.001)[i % 3], "layers": i % 50, "opt": "adam"},
            "tags": [f"t{i % 7}"],
        }
        doc = runs.apply_patch(None, patch, default_name="", now=TIMESTAMP + i)
        (base / cid / "run.json").write_text(runs.dumps(doc))


def plain_list_runs(base: Path) -> tuple[int, int]:
    """Baseline: read and parse every run.json, filter, order by the document's creation."""
    query = runs.parse_filter(json.dumps(RUNS_QUERY))
    found = []
    for entry in os.scandir(base):
        if entry.name.startswith("."):
            continue
        doc = runs.load_document((Path(entry.path) / "run.json").read_bytes())
        if query.matches(entry.name, "bench", None, doc):
            assert doc is not None
            found.append((-doc["created_at"], entry.name))
    found.sort()
    return len(found[query.offset : query.offset + query.limit]), len(found)


def list_runs_ms(server: Server) -> tuple[list[float], int, int]:
    """LIST_RUNS round trips in ms: the first (cold), RUNS_REPEAT back to back (warm, as
    a client paging sees them), then one after RECHECK_S (it checks every run.json);
    and the last page's rows and total."""
    request = encode_request(ListRuns(key_hash=KEY_HASH, filter=json.dumps(RUNS_QUERY)))
    times = []
    with connect(server.url, compression=None, proxy=None, max_size=None) as ws:
        for n in range(RUNS_REPEAT + 2):
            if n == RUNS_REPEAT + 1:
                time.sleep(RECHECK_S)
            started = time.perf_counter()
            ws.send(request)
            message = ws.recv()
            times.append((time.perf_counter() - started) * 1000)
    response = decode_response(message) if isinstance(message, bytes) else message
    if not isinstance(response, Data):
        raise RuntimeError(f"LIST_RUNS answered {response}")
    page = json.loads(response.payload)
    return times, len(page["runs"]), page["total"]


def list_runs(b: Bench) -> list[Row]:
    """LIST_RUNS with a filter over b.sizes.runs run documents, against plain Python."""
    server = b.start_daemon("runs", "write", {})
    base = b.tmp / "runs" / "experiments"
    write_runs(base, b.sizes.runs)
    times, rows, total = list_runs_ms(server)
    warm = statistics.median(times[1:-1])
    expected, plain_s = timed(plain_list_runs, base)
    if (rows, total) != expected:
        b.errors.append(f"LIST_RUNS: {rows} rows of {total}, expected {expected}")
    b.details["list_runs"] = {
        "cold_ms": times[0],
        "warm_ms": warm,
        "checked_ms": times[-1],
        "rows": rows,
        "total": total,
    }
    b.stop(server)
    return [Row(BY_KEY["list_runs"], warm, plain_s * 1000)]


# -- figures: memory -----------------------------------------------------------------------------


def connection_cost(b: Bench, server: Server) -> float | None:
    """Server RSS growth per idle connection (then the server is stopped)."""
    count = b.sizes.idle_connections
    before = server.rss()
    idle = b.start_load(Idle, server, connections=count)
    try:
        if server.is_daemon:
            open_now = wait_for_connections(server, count)
            if open_now != count:
                b.errors.append(
                    f"{server.name}: /health counts {open_now} connections, not {count}"
                )
        time.sleep(IDLE_SETTLE_S)
        after = server.rss()
    finally:
        result = b.finish_load(idle, Idle, server)
    b.details.setdefault("idle_memory", {})[server.name] = {
        "rss_before": before,
        "rss_after": after,
        "load": detail(result),
    }
    b.stop(server)
    return (after - before) / result.connections if result and result.connections else None


def wait_for_connections(server: Server, count: int, timeout: float = 10) -> int:
    """The daemon's open connections (GET /health), once `count` or after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        open_now = int(server.health()["connections"])
        if open_now == count or time.monotonic() > deadline:
            return open_now
        time.sleep(0.1)


def idle_memory(b: Bench) -> list[Row]:
    """Fresh servers: RSS before and after opening many idle connections."""
    echo = connection_cost(b, b.start_echo("echo-idle"))
    daemon = connection_cost(b, b.start_daemon("idle", "write", {}))
    return [Row(BY_KEY["idle_rss"], daemon, echo)]


# -- the run --------------------------------------------------------------------------------------


def write_daemon_experiments(sizes: Sizes) -> dict[str, bytes]:
    history = many_names_records(WATCH_HISTORY)
    labels = ("single", "onecall", "sync", "latency", "batch", "at-plain", "at-client")
    experiments = {label: b"" for label in labels}
    experiments.update({f"stream-{i}": b"" for i in range(STREAMS)})
    watched = ("watch", "ingest-alone", "ingest-watched", "ingest-alone-few", "ingest-watched-few")
    experiments.update({label: history for label in watched})
    experiments["reads-many"] = many_names_records(sizes.read_records)
    experiments["reads-one"] = one_series_records(sizes.read_records)
    return experiments


STEPS = [
    single_metric_ingest,
    one_at_a_time,
    ack_latency,
    batched_ingest,
    client_timestamps,
    metric_logger,
    many_connections,
    reads,
    push_latency,
    watcher_cost,
    list_runs,
]


def start_main_servers(b: Bench) -> None:
    """The baseline and the two daemons shared by most figures."""
    b.echo = b.start_echo("echo")
    b.write = b.start_daemon("write", "write", write_daemon_experiments(b.sizes))
    b.fsync = b.start_daemon("fsync", "fsync", {"latency": b"", "batch": b""})


def run(b: Bench, rows: list[Row], cluster: bool) -> None:
    """Every figure but the cluster's; then those too when `cluster`."""
    started = time.monotonic()
    start_main_servers(b)
    progress("servers started", started)
    for step in STEPS:
        rows += step(b)
        progress(step.__name__, started)
    b.stop_all()
    rows += idle_memory(b)
    progress("idle_memory", started)
    rows += idle_workers(b)
    progress("idle_workers", started)
    if cluster:
        rows += bench_cluster.run(b, lambda step: progress(step, started))


def progress(step: str, started: float) -> None:
    print(f"[{time.monotonic() - started:5.1f} s] {step}", file=sys.stderr, flush=True)


def name_values(sizes: Sizes) -> dict[str, Any]:
    """What the figures' names are filled with."""
    return {
        **asdict(sizes),
        "latency_rate": LATENCY_RATE,
        "onecall_calls": onecall_calls(sizes),
        "batch": BATCH,
        "at_rounds": AT_ROUNDS,
        "streams": STREAMS,
        "lttb_points": LTTB_POINTS,
        "read_names": len(READ_NAMES),
        "few_watchers": FEW_WATCHERS,
        "idle_workers": IDLE_WORKERS,
        "cluster_nodes": bench_cluster.CLUSTER_NODES,
        "cluster_rate": bench_cluster.CLUSTER_RATE,
        "cluster_batch": bench_cluster.CLUSTER_BATCH,
        "cluster_ingest_batch": bench_cluster.INGEST_BATCH,
        **{f"logger_{k}": v for k, v in asdict(logger_sizes(sizes)).items()},
    }


def environment(tmp: Path) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "websockets": websockets_version,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "data_dir": str(tmp),
    }


def print_report(rows: list[Row], b: Bench, mode: str, names: dict[str, Any]) -> None:
    print()
    print(console_table(rows, names, mode))
    for note in b.notes:
        print(f"note: {note}")
    for error in b.errors:
        print(f"ERROR: {error}")


def write_report(
    path: Path, rows: list[Row], b: Bench, mode: str, env: dict[str, Any], names: dict[str, Any]
) -> None:
    report = {
        "mode": mode,
        "sizes": names,
        "environment": env,
        "rows": [r.as_json() for r in rows],
        "notes": b.notes,
        "errors": b.errors,
        "details": b.details,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def print_markdown(path: Path) -> int:
    """The README's table from a results file; 1 (and why) when it cannot be read."""
    try:
        report = json.loads(path.read_text())
        rows = rows_from_json(report["rows"])
        table = markdown_table(rows, report["sizes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot make the table from {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 45 s, smaller counts (CI)")
    parser.add_argument(
        "--cluster", action="store_true", help="only the cluster figures (needs redis-server)"
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp data dir")
    parser.add_argument(
        "--large",
        action="store_true",
        help="read costs of one large experiment beside many small ones (cached data)",
    )
    parser.add_argument("--large-records", type=int, default=100_000_000, metavar="N")
    parser.add_argument("--large-small", type=int, default=20_000, metavar="N")
    parser.add_argument("--large-cache", type=Path, default=bench_large_data.CACHE, metavar="DIR")
    parser.add_argument(
        "--keep-page-cache", action="store_true", help="--large: do not drop the page cache"
    )
    parser.add_argument(
        "--table",
        type=Path,
        nargs="?",
        const=Path("bench-results.json"),
        help="print the README's table from a results file (default bench-results.json); no run",
    )
    args = parser.parse_args(argv)
    if args.table:
        return print_markdown(args.table)
    if args.large_records < len(bench_large_data.NAMES) or args.large_small < 1:
        parser.error(
            f"--large-records must be at least {len(bench_large_data.NAMES)} (one per name) "
            "and --large-small at least 1"
        )
    if args.cluster and args.large:
        parser.error("--cluster and --large are separate runs")
    mode = (
        "large" if args.large else "cluster" if args.cluster else "quick" if args.quick else "full"
    )
    missing = bench_cluster.redis_missing()
    if mode in ("cluster", "full") and missing:
        parser.error(f"{missing} (or run --quick)")
    large = bench_large.LargeSizes(args.large_records, args.large_small, not args.keep_page_cache)
    raise_open_file_limit()
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fetchml-bench-", dir=args.dir) as tmp:
        b = Bench(Path(tmp), QUICK if args.quick else FULL)
        names = large.names() if args.large else name_values(b.sizes)
        env = environment(Path(tmp))
        try:
            if args.large:
                rows += bench_large.run(b, large, args.large_cache)
            elif args.cluster:
                started_at = time.monotonic()
                rows += bench_cluster.run(b, lambda step: progress(step, started_at))
            else:
                run(b, rows, cluster=mode == "full")
        except Exception as exc:  # a dead daemon, a server that would not start
            traceback.print_exc()
            b.errors.append(f"benchmark stopped: {exc}")
        finally:
            b.stop_all()
    print_report(rows, b, mode, names)
    write_report(args.json, rows, b, mode, env, names)
    print(f"\n{len(b.errors)} errors, {time.monotonic() - started:.0f} s; results in {args.json}")
    return 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
