"""fetchml's side of scripts/bench_peers.py: each figure timed through the project's own
client in this process, with the daemon's CPU seconds over the timed part."""

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fetchml.client import Client, MetricLogger, SyncClient
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY

CHUNK = 10_000  # points per log_metrics call when filling the read-back experiment


@dataclass(frozen=True)
class Run:
    """One timed run: `count` units in `seconds`, and the server's CPU seconds meanwhile."""

    seconds: float
    count: int
    cpu: float = 0.0
    run_id: str = ""  # MLflow's run, for a read after `fill`


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(pid: int, work: Callable[[], int]) -> Run:
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    count = work()
    seconds = time.perf_counter() - start
    return Run(seconds, count, cpu_seconds(pid) - cpu)


async def client_calls(url: str, pid: int, n: int) -> Run:
    """`n` LOG_METRIC into a new experiment, each awaited before the next is sent."""
    commit = commit_of(f"calls-{time.time_ns()}")
    async with Client.connect(url, api_key=ADMIN_KEY) as client:
        await client.create_experiment(commit)
        await client.log_metric(commit, "warm-up", 0.0)
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        for i in range(n):
            await client.log_metric(commit, "loss", i * 0.5, step=i)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu
        held = len(await client.query_columns(commit, "loss"))
    return checked(Run(seconds, n, cpu), held, "Client.log_metric")


def blocking_calls(url: str, pid: int, n: int) -> Run:
    """`n` blocking SyncClient.log_metric calls from a plain script, into a new experiment."""
    commit = commit_of(f"blocking-{time.time_ns()}")

    async def create() -> None:
        async with Client.connect(url, api_key=ADMIN_KEY) as client:
            await client.create_experiment(commit)

    asyncio.run(create())
    with SyncClient.connect(url, api_key=ADMIN_KEY) as client:
        client.log_metric(commit, "warm-up", 0.0)

        def work() -> int:
            for i in range(n):
                client.log_metric(commit, "loss", i * 0.5, step=i)
            return n

        run = timed(pid, work)
        held = len(client.query_columns(commit, "loss"))
    return checked(run, held, "SyncClient.log_metric")


def logger_flushed(url: str, pid: int, n: int) -> Run:
    """`n` MetricLogger.log calls, each followed by flush() (which waits for its ack)."""
    ml = MetricLogger(url=url, api_key=ADMIN_KEY, name="bench-flush")
    ml.log("warm-up", 0.0)
    ml.flush()

    def work() -> int:
        for i in range(n):
            ml.log("loss", i * 0.5, step=i)
            ml.flush()
        return n

    run = timed(pid, work)
    ml.close()
    return checked(run, ml.stats().acknowledged - 1, "MetricLogger.log + flush()")


def logger_closed(url: str, pid: int, n: int) -> Run:
    """`n` MetricLogger.log calls, then close() (every point acknowledged)."""
    ml = MetricLogger(url=url, api_key=ADMIN_KEY, name="bench-batched")

    def work() -> int:
        log = ml.log
        for i in range(n):
            log("loss", i * 0.5, step=i)
        if not ml.close(timeout=600):
            raise SystemExit("MetricLogger.close() failed")
        return n

    run = timed(pid, work)
    return checked(run, ml.stats().acknowledged, "MetricLogger + close()")


async def fill(url: str, n: int, label: str) -> str:
    commit = commit_of(label)
    async with Client.connect(url, api_key=ADMIN_KEY) as client:
        await client.create_experiment(commit)
        for first in range(0, n, CHUNK):
            last = min(first + CHUNK, n)
            await client.log_metrics(commit, (("loss", i * 0.5, i) for i in range(first, last)))
    return commit


async def read_columns(url: str, pid: int, commit: str, n: int) -> Run:
    """Client.query_columns of every point of one name, after one untimed read."""
    async with Client.connect(url, api_key=ADMIN_KEY) as client:
        await client.query_columns(commit, "loss")
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        columns = await client.query_columns(commit, "loss")
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu
    return checked(Run(seconds, n, cpu), len(columns), "Client.query_columns")


def checked(run: Run, held: int, what: str) -> Run:
    if held != run.count:
        raise SystemExit(f"{what}: the daemon holds {held} of {run.count} points")
    return run


# -- the table --------------------------------------------------------------------------------
