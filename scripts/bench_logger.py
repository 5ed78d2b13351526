"""MetricLogger's speed: end to end beside the daemon's batched ingest, log() per call, and
one blocking log() + flush() at a time beside a bare websockets round trip.

Standalone, with its own daemon (tests/support/daemon.py: a subprocess on a free port, a
temporary data directory), it prints a table:

    python scripts/bench_logger.py [--points N] [--batch-size B] [--calls N]

It times N `logger.log("loss", v, step=i)` calls (each stamped with time.time()),
closes the logger (which waits for every acknowledgement), checks that the run holds all
N records, and runs the daemon's batched ingest of as many points: the load generator
(scripts/bench_load.py, its own process) pipelines them as LOG_METRICS of 1,000 (100 in
flight) into a fresh experiment, as scripts/bench's batched figure does. The mean per
call includes the time the logger's own thread holds the GIL; the median is over chunks
of 1,000 calls, so it is the cost of a call itself. The CPU time of both of the
client's threads, from the first log() to the end of close(), moves less than the
wall-clock figures when other processes share the machine. Then one point at a time:
`log(); flush()` (flush returns once the point is acknowledged) beside a websockets sync
client's send() + recv() of a message of the same size, to the bare echo server
(scripts/bench_echo.py) and to the daemon.

scripts/bench runs `figures` (each measurement in a process of its own, which prints one
JSON line):

    python scripts/bench_logger.py e2e --url URL --key KEY --points N [--batch-size B]
    python scripts/bench_logger.py sync --url URL --key KEY --calls N
    python scripts/bench_logger.py bare --url URL --key KEY --calls N
"""

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_records import Pipeline, read_report  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from fetchml.client import Client, MetricLogger  # noqa: E402
from fetchml.protocol.keys import key_hash  # noqa: E402
from fetchml.protocol.metrics import encode_record  # noqa: E402
from fetchml.protocol.requests import log_metrics_at_head  # noqa: E402
from tests.support.daemon import DaemonProcess, daemon_at  # noqa: E402
from tests.support.keys import ADMIN_KEY  # noqa: E402

CHUNK = 1000
BATCH = 1000
WINDOW = 100
WARMUP = 50
"""Untimed calls before a one-at-a-time run."""
INGEST_COMMIT = "be" * 20
BARE_COMMIT = "bf" * 20


@dataclass(frozen=True)
class LoggerSizes:
    points: int
    """Logged, then close(); and as many in the daemon's batched ingest."""
    calls: int
    """log() + flush() one at a time; and as many bare round trips."""
    rounds: int
    """Alternating runs of each; the median counts."""
    bare_daemon: bool
    """Also a bare websockets round trip to the daemon (a note)."""


FULL = LoggerSizes(points=1_000_000, calls=3_000, rounds=3, bare_daemon=True)
QUICK = LoggerSizes(points=200_000, calls=500, rounds=1, bare_daemon=False)


# -- the measurements (each in its own process under scripts/bench) ---------------------------


def baseline(n: int) -> tuple[float, float]:
    """Total seconds and median seconds per call (over chunks of CHUNK calls)."""
    out: list[tuple[str, float, int]] = []
    append = out.append
    clock = time.perf_counter
    chunks = []
    gc.collect()
    start = clock()
    for first in range(0, n, CHUNK):
        began = clock()
        for i in range(first, min(first + CHUNK, n)):
            append(("loss", i * 0.5, i))
        chunks.append(clock() - began)
    return clock() - start, statistics.median(chunks) / CHUNK


def logged(n: int, url: str, key: str, batch_size: int) -> dict[str, Any]:
    """N log() calls then close(): seconds logging, median seconds per call, seconds in
    close(), CPU seconds of both threads (this process) from the first log() to the end of
    close(), the run and what it acknowledged."""
    ml = MetricLogger(url=url, api_key=key, name="bench", batch_size=batch_size)
    log = ml.log
    clock = time.perf_counter
    chunks = []
    gc.collect()
    cpu = time.process_time()
    start = clock()
    for first in range(0, n, CHUNK):
        began = clock()
        for i in range(first, min(first + CHUNK, n)):
            log("loss", i * 0.5, step=i)
        chunks.append(clock() - began)
    elapsed = clock() - start
    start = clock()
    ok = ml.close(timeout=300)
    drained = clock() - start
    cpu = time.process_time() - cpu
    if not ok:
        raise SystemExit("MetricLogger.close() failed")
    return {
        "points": n,
        "logging_s": elapsed,
        "median_s": statistics.median(chunks) / CHUNK,
        "close_s": drained,
        "cpu_s": cpu,
        "run_id": ml.run_id,
        "acknowledged": ml.acknowledged,
    }


def one_at_a_time(calls: int, url: str, key: str) -> dict[str, Any]:
    """log() + flush() per point: calls per second, the run and what it acknowledged."""
    with MetricLogger(url=url, api_key=key, name="bench-sync") as ml:
        log, flush = ml.log, ml.flush
        for i in range(WARMUP):
            log("loss", i * 0.5, step=i)
            flush()
        start = time.perf_counter()
        for i in range(WARMUP, WARMUP + calls):
            log("loss", i * 0.5, step=i)
            flush()
        seconds = time.perf_counter() - start
    return {
        "calls_per_second": calls / seconds,
        "run_id": ml.run_id,
        "acknowledged": ml.acknowledged,
    }


def one_point_message(key: str, commit: str) -> bytes:
    """The LOG_METRICS_AT of one "loss" point, as flush() sends it."""
    head = log_metrics_at_head(key_hash(key), bytes.fromhex(commit), 1)
    return head + encode_record(int(time.time()), 0, 0.5, b"loss")


def bare(calls: int, url: str, key: str) -> dict[str, Any]:
    """A websockets sync client's send() + recv() of the one-point message, one at a time
    (to the echo server, or to the daemon, which stores each point)."""
    message = one_point_message(key, BARE_COMMIT)
    with connect(url, compression=None, proxy=None, additional_headers={"X-API-Key": key}) as ws:
        for _ in range(WARMUP):
            ws.send(message)
            ws.recv()
        start = time.perf_counter()
        for _ in range(calls):
            ws.send(message)
            ws.recv()
        seconds = time.perf_counter() - start
    return {"calls_per_second": calls / seconds, "bytes": len(message)}


# -- scripts/bench -----------------------------------------------------------------------------


def figures(b: Any, sizes: LoggerSizes) -> list[Any]:
    """scripts/bench's logger figures on its write daemon, each beside its same-run baseline:
    end to end and log() per call (against the daemon's batched ingest of as many points,
    and list.append), then log() + flush() one at a time (against the bare echo round trip).
    """
    from bench_figures import BY_KEY, Row
    from bench_servers import KEY

    write = b.write
    asyncio.run(create(write.url, KEY, INGEST_COMMIT))
    asyncio.run(create(write.url, KEY, BARE_COMMIT))
    ingest: list[float] = []
    runs: list[dict[str, Any]] = []
    expected: dict[str, int] = {}
    ingested = 0
    for _ in range(sizes.rounds):
        load = b.load(
            Pipeline,
            write,
            commits=INGEST_COMMIT,
            per_message=BATCH,
            messages=max(1, sizes.points // BATCH),
            window=WINDOW,
        )
        if load and load.metrics_per_second:
            ingest.append(load.metrics_per_second)
            ingested += load.acked()
        if run := measure(b, "e2e", write.url, points=sizes.points):
            runs.append(run)
            expected[run["run_id"]] = sizes.points
    expected[INGEST_COMMIT] = ingested
    echo_rates: list[float] = []
    sync_rates: list[float] = []
    for _ in range(sizes.rounds):
        if echo := measure(b, "bare", b.echo.url, calls=sizes.calls):
            echo_rates.append(echo["calls_per_second"])
        if sync := measure(b, "sync", write.url, calls=sizes.calls):
            sync_rates.append(sync["calls_per_second"])
            expected[sync["run_id"]] = sizes.calls + WARMUP
    if sizes.bare_daemon and (daemon := measure(b, "bare", write.url, calls=sizes.calls)):
        expected[BARE_COMMIT] = sizes.calls + WARMUP
        b.notes.append(
            "a websockets sync client's send() + recv() of the same one-point LOG_METRICS_AT "
            f"to the daemon: {daemon['calls_per_second']:,.0f} calls/s"
        )
    check_counts(b, write, expected)
    e2e = [run["points"] / (run["logging_s"] + run["close_s"]) for run in runs]
    b.details["metric_logger"] = {"ingest": ingest, "e2e": runs, "echo": echo_rates}
    b.details["metric_logger"]["sync"] = sync_rates
    if runs:
        cpu = statistics.median(run["cpu_s"] / run["points"] * 1e6 for run in runs)
        b.notes.append(f"MetricLogger client CPU per million points: {cpu:.2f} s (both threads)")
    return [
        Row(BY_KEY["logger_e2e"], median(e2e), median(ingest)),
        Row(
            BY_KEY["logger_log"],
            median([run["median_s"] * 1e6 for run in runs]),
            median([run["append_median_s"] * 1e6 for run in runs]),
        ),
        Row(BY_KEY["logger_sync"], median(sync_rates), median(echo_rates)),
    ]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def measure(b: Any, mode: str, url: str, **options: int) -> dict[str, Any] | None:
    """Run one measurement in its own process; its JSON (None, and an error, if it failed)."""
    from bench_servers import KEY

    argv = [sys.executable, str(Path(__file__)), mode, "--url", url, "--key", KEY]
    for name, value in options.items():
        argv += [f"--{name}", str(value)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        b.errors.append(f"bench_logger {mode} failed ({done.returncode}): {done.stderr[-2000:]}")
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def check_counts(b: Any, server: Any, expected: dict[str, int]) -> None:
    """Each run or experiment must hold exactly the records acknowledged."""
    counts = b.experiment_counts(server)
    for commit, count in expected.items():
        if counts.get(commit) != count:
            b.errors.append(
                f"{server.name}: {commit[:12]} holds {counts.get(commit)} records, "
                f"{count} were acknowledged"
            )


# -- standalone ---------------------------------------------------------------------------------


async def create(url: str, key: str, commit: str) -> None:
    async with Client.connect(url, api_key=key) as client:
        await client.create_experiment(commit, exist_ok=True)


async def stored(url: str, key: str, run_id: str) -> int:
    async with Client.connect(url, api_key=key) as client:
        (row,) = (await client.list_runs_page({"id": run_id})).runs
        return row.metrics_count


def daemon_ingest(n: int, url: str, key: str) -> float:
    """Metrics per second the daemon takes as LOG_METRICS of BATCH, pipelined (the load
    generator's own figure, from its first send to its last answer)."""
    asyncio.run(create(url, key, INGEST_COMMIT))
    argv = [sys.executable, str(ROOT / "scripts" / "bench_load.py"), "pipeline", "--url", url]
    argv += ["--key", key, "--commits", INGEST_COMMIT, "--per-message", str(BATCH)]
    argv += ["--messages", str(max(1, n // BATCH)), "--window", str(WINDOW)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    report = read_report(done.stdout.strip().splitlines()[-1])
    if report.errors or not isinstance(report.result, Pipeline):
        raise SystemExit(f"load generator failed: {report.errors}")
    rate = report.result.metrics_per_second
    if rate is None:
        raise SystemExit("load generator measured nothing")
    return rate


def table(n: int, batch_size: int, calls: int) -> int:
    key = ADMIN_KEY
    with tempfile.TemporaryDirectory(prefix="fetchml-bench-") as tmp:
        daemon = daemon_at(Path(tmp))
        echo_argv = [sys.executable, str(ROOT / "scripts" / "bench_echo.py")]
        echo = DaemonProcess(None, Path(tmp) / "echo.log", argv=echo_argv)
        try:
            url = daemon.start().url
            base, base_median = baseline(n)
            run = logged(n, url, key, batch_size)
            count = asyncio.run(stored(url, key, run["run_id"]))
            ingest = daemon_ingest(n, url, key)
            asyncio.run(create(url, key, BARE_COMMIT))
            sync = one_at_a_time(calls, url, key)["calls_per_second"]
            to_echo = bare(calls, echo.start().url, key)["calls_per_second"]
            to_daemon = bare(calls, url, key)["calls_per_second"]
        finally:
            echo.close()
            daemon.close()
    elapsed, drained, cpu = run["logging_s"], run["close_s"], run["cpu_s"]
    rows = [
        ("list.append (baseline)", f"{base:.3f}", f"{base / n * 1e6:.3f}"),
        ("MetricLogger.log", f"{elapsed:.3f}", f"{elapsed / n * 1e6:.3f}"),
        ("overhead per call", "", f"{(elapsed - base) / n * 1e6:.3f}"),
        ("list.append, median", "", f"{base_median * 1e6:.3f}"),
        ("MetricLogger.log, median", "", f"{run['median_s'] * 1e6:.3f}"),
        ("close() after the loop", f"{drained:.3f}", ""),
        ("end to end", f"{elapsed + drained:.3f}", f"{n / (elapsed + drained):,.0f} points/s"),
        ("client CPU, both threads", f"{cpu:.3f}", f"{cpu / n * 1e6:.3f}"),
        ("daemon, LOG_METRICS of 1,000", f"{n / ingest:.3f}", f"{ingest:,.0f} points/s"),
        ("end to end / daemon", "", f"{n / (elapsed + drained) / ingest:.2f}x"),
        ("log() + flush(), one at a time", "", f"{sync:,.0f} calls/s"),
        ("websockets sync, echo", "", f"{to_echo:,.0f} calls/s"),
        ("websockets sync, daemon", "", f"{to_daemon:,.0f} calls/s"),
        ("log() + flush() / echo", "", f"{sync / to_echo:.2f}x"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'seconds':>9}  {'us/call':>16}")
    for label, seconds, per in rows:
        print(f"{label:{width}}  {seconds:>9}  {per:>16}")
    acknowledged = run["acknowledged"]
    verdict = "ok" if count == n and acknowledged == n else "MISSING RECORDS"
    print(f"daemon holds {count:,} of {n:,} records ({acknowledged:,} acknowledged): {verdict}")
    return 0 if verdict == "ok" else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", nargs="?", default="table", choices=("table", "e2e", "sync", "bare")
    )
    parser.add_argument("--url", default="")
    parser.add_argument("--key", default=ADMIN_KEY)
    parser.add_argument("--points", type=int, default=FULL.points)
    parser.add_argument("--calls", type=int, default=FULL.calls)
    parser.add_argument("--batch-size", type=int, default=10_000, help="the logger's")
    args = parser.parse_args()
    if args.mode == "table":
        return table(args.points, args.batch_size, args.calls)
    if args.mode == "e2e":
        _, append_median = baseline(args.points)
        result = logged(args.points, args.url, args.key, args.batch_size)
        result["append_median_s"] = append_median
    elif args.mode == "sync":
        result = one_at_a_time(args.calls, args.url, args.key)
    else:
        result = bare(args.calls, args.url, args.key)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
