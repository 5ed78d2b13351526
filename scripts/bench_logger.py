"""Caller-thread cost of MetricLogger.log(), against appending the same tuples to a list.

Starts its own daemon (tests/support/daemon.py: a subprocess on a free port, a
temporary data directory), starts a run, times N `logger.log("loss", v, step=i)` calls
(each stamped with time.time()), closes the logger (which waits for every
acknowledgement), checks that the run holds all N records, and prints a small table. The mean includes the time the logger's own thread
holds the GIL; the median is over chunks of 1,000 calls, so it is the cost of
a call itself. The CPU time of both of the client's threads, from the first
log() to the end of close(), moves less than the wall-clock figures when
other processes share the machine.
Usage: python scripts/bench_logger.py [--points N]
"""

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fetchml.client import Client, MetricLogger  # noqa: E402
from tests.support.daemon import daemon_at  # noqa: E402
from tests.support.keys import ADMIN_KEY  # noqa: E402

CHUNK = 1000


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


def logged(n: int, url: str, key: str) -> tuple[float, float, float, float, MetricLogger]:
    """Seconds logging, median seconds per call, seconds in close(), CPU seconds of both
    threads (this process) from the first log() to the end of close()."""
    ml = MetricLogger(url=url, api_key=key, name="bench")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    n = parser.parse_args().points
    key = ADMIN_KEY
    with tempfile.TemporaryDirectory(prefix="fetchml-bench-") as tmp:
        daemon = daemon_at(Path(tmp))
        try:
            url = daemon.start().url
            base, base_median = baseline(n)
            elapsed, median, drained, cpu, ml = logged(n, url, key)
            count = asyncio.run(stored(url, key, ml.run_id))
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
