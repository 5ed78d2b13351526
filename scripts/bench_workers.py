"""The daemon's cost of idle workers: IDLE_WORKERS claim loops (the load generator's
`claims` mode: CLAIM_JOB on an empty queue, then the worker's own backoff of 1 s doubling
to 10 s with jitter, one connection each) against a fresh daemon, whose CPU time
(/proc/<pid>/stat) over the window is a percentage of one core. The full run measures
once the loops have waited through the backoff's ramp (idle workers in their steady
state); --quick measures from their first claim. The baseline is the same daemon with no
workers, over a quarter of the window. Used by scripts/bench.py."""

import statistics
import time

from bench_figures import BY_KEY, Row
from bench_records import Claims
from bench_servers import Bench, Server

from fetchml.worker.agent import IDLE_S, MAX_IDLE_S
from fetchml.worker.link import backoff

IDLE_WORKERS = 100


def cpu_percent(server: Server, seconds: float) -> tuple[float, float]:
    """(CPU % of one core, CPU seconds) of the server over the next `seconds`."""
    cpu, wall = server.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    used = server.cpu_seconds() - cpu
    return used / (time.monotonic() - wall) * 100, used


def idle_workers(b: Bench) -> list[Row]:
    server = b.start_daemon("workers", "write", {})
    window = b.sizes.worker_seconds
    alone, _ = cpu_percent(server, window / 4)
    loops = b.start_load(Claims, server, workers=IDLE_WORKERS)
    try:
        time.sleep(b.sizes.worker_ramp_seconds)
        loaded, cpu_s = cpu_percent(server, window)
    finally:
        result = b.finish_load(loops, Claims, server)
    b.stop(server)
    if result is not None and result.workers != IDLE_WORKERS:
        b.errors.append(f"idle workers: {result.workers} of {IDLE_WORKERS} connected")
    claims = result.claims if result else 0
    ramp = b.sizes.worker_ramp_seconds
    b.details["idle_workers"] = {
        "alone_percent": alone,
        "percent": loaded,
        "cpu_s": cpu_s,
        "claims": claims,
        "ramp_seconds": ramp,
        "seconds": window,
    }
    steady = IDLE_WORKERS / statistics.fmean(backoff(99, IDLE_S, MAX_IDLE_S) for _ in range(1000))
    b.notes.append(
        f"idle workers: {claims:,} empty claims in {ramp + window:g} s; over the last "
        f"{window:g} s the daemon used {cpu_s:.2f} s of CPU ({loaded:.2f}% of a core; alone "
        f"{alone:.2f}%); at the longest backoff 100 workers claim about {steady:.1f} times a second"
    )
    return [Row(BY_KEY["idle_workers"], loaded, alone)]
