"""Caller-thread cost of MetricLogger.log(), against appending the same tuples to a list.

Starts its own daemon (tests/support/daemon.py: a subprocess on a free port, a
temporary data directory), starts a run, times N `logger.log("loss", v, step=i)` calls
(each stamped with time.time()), closes the logger (which waits for every
acknowledgement), checks that the run holds all N records, and prints a small table. The mean includes the time the logger's own thread
holds the GIL; the median is over chunks of 1,000 calls, so it is the cost of
a call itself. The CPU time of both of the client's threads, from the first
log() to the end of close(), moves less than the wall-clock figures when
other processes share the machine.

Then, on the same daemon, the daemon's batched ingest: the load generator
(scripts/bench_load.py, its own process) pipelines N points as LOG_METRICS of
1,000 (100 in flight) into a fresh experiment, as scripts/bench's batched figure
does; the logger's end to end (log() of N points plus close()) is printed as a
ratio of it.
Usage: python scripts/bench_logger.py [--points N] [--batch-size B]
"""

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_records import Pipeline, read_report  # noqa: E402

from fetchml.client import Client, MetricLogger  # noqa: E402
from tests.support.daemon import daemon_at  # noqa: E402
from tests.support.keys import ADMIN_KEY  # noqa: E402

CHUNK = 1000
BATCH = 1000
WINDOW = 100
INGEST_COMMIT = "be" * 20


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


def logged(
    n: int, url: str, key: str, batch_size: int
) -> tuple[float, float, float, float, MetricLogger]:
    """Seconds logging, median seconds per call, seconds in close(), CPU seconds of both
    threads (this process) from the first log() to the end of close()."""
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
    return elapsed, statistics.median(chunks) / CHUNK, drained, cpu, ml


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


async def create(url: str, key: str, commit: str) -> None:
    async with Client.connect(url, api_key=key) as client:
        await client.create_experiment(commit, exist_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000, help="the logger's")
    args = parser.parse_args()
    n = args.points
    key = ADMIN_KEY
    with tempfile.TemporaryDirectory(prefix="fetchml-bench-") as tmp:
        daemon = daemon_at(Path(tmp))
        try:
            url = daemon.start().url
            base, base_median = baseline(n)
            elapsed, median, drained, cpu, ml = logged(n, url, key, args.batch_size)
            count = asyncio.run(stored(url, key, ml.run_id))
            ingest = daemon_ingest(n, url, key)
        finally:
            daemon.close()
    stats = ml.stats()
    rows = [
        ("list.append (baseline)", f"{base:.3f}", f"{base / n * 1e6:.3f}"),
        ("MetricLogger.log", f"{elapsed:.3f}", f"{elapsed / n * 1e6:.3f}"),
        ("overhead per call", "", f"{(elapsed - base) / n * 1e6:.3f}"),
        ("list.append, median", "", f"{base_median * 1e6:.3f}"),
        ("MetricLogger.log, median", "", f"{median * 1e6:.3f}"),
        ("close() after the loop", f"{drained:.3f}", ""),
        ("end to end", f"{elapsed + drained:.3f}", f"{n / (elapsed + drained):,.0f} points/s"),
        ("client CPU, both threads", f"{cpu:.3f}", f"{cpu / n * 1e6:.3f}"),
        ("daemon, LOG_METRICS of 1,000", f"{n / ingest:.3f}", f"{ingest:,.0f} points/s"),
        ("end to end / daemon", "", f"{n / (elapsed + drained) / ingest:.2f}x"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'seconds':>9}  {'us/call':>16}")
    for label, seconds, per in rows:
        print(f"{label:{width}}  {seconds:>9}  {per:>16}")
    verdict = "ok" if count == n and stats.acknowledged == n else "MISSING RECORDS"
    print(
        f"daemon holds {count:,} of {n:,} records ({stats.acknowledged:,} acknowledged): {verdict}"
    )
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
