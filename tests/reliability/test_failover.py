"""Clients given the URLs of several cluster nodes fail over when a node is SIGKILLed.

The nodes are daemon subprocesses in cluster mode over one data directory (each with
its own jobs database); the clients name all of them, comma-separated. A MetricLogger
logging without pause survives killing the node it writes to, twice, and in the end
the run's metrics.bin holds every point exactly once, in order (resume by count works
on any node: the file is shared). A watch following a run moves with it and sees
every record once. The worker's connection moves to the next node when its node dies.

By default two kills with 300 points logged between them; FETCHML_LONG=1 kills the
node in use 12 times (restarting each killed node), with 5,000 points between kills.
"""

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetchml.client import Client, MetricLogger
from fetchml.client.models import MetricsPage
from tests.support.daemon import DaemonProcess, daemon_at
from tests.support.experiments import commit_of, file_records
from tests.support.keys import ADMIN_KEY, WORKER_KEY
from tests.support.redis import RedisServer
from tests.support.worker import WorkerProcess, output_log, wait_jobs

LONG = os.environ.get("FETCHML_LONG") == "1"
KILLS = 12 if LONG else 2
POINTS = 5000 if LONG else 300
"""Points acknowledged on each node before it is killed."""
DEADLINE_S = 30.0


def cluster(tmp_path: Path, redis: RedisServer, nodes: int) -> tuple[list[DaemonProcess], Path]:
    """`nodes` cluster daemons over one data directory, started (in parallel)."""
    base = tmp_path / "shared"
    homes = [tmp_path / f"node{i}" for i in range(nodes)]
    for home in homes:
        home.mkdir()
    procs = [
        daemon_at(
            home,
            storage={"base_path": str(base)},
            cluster={"redis_url": redis.url, "node_name": home.name},
        )
        for home in homes
    ]
    for proc in procs:
        proc.spawn()
    for proc in procs:
        proc.ready()
    return procs, base


@pytest.fixture
def three_nodes(
    tmp_path: Path, redis_server: RedisServer
) -> Iterator[tuple[list[DaemonProcess], Path]]:
    procs, base = cluster(tmp_path, redis_server, 3)
    yield procs, base
    for proc in procs:
        proc.reap()


def url_list(procs: list[DaemonProcess]) -> str:
    return ",".join(proc.url for proc in procs)


class Logging(threading.Thread):
    """Logs point i as ("v", i, step=i), a few at a time, until stopped."""

    def __init__(self, ml: MetricLogger) -> None:
        super().__init__(name="training-loop", daemon=True)
        self.ml = ml
        self.logged = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for _ in range(5):
                self.ml.log("v", float(self.logged), step=self.logged)
                self.logged += 1
            time.sleep(0.001)


def wait_acknowledged(ml: MetricLogger, count: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while ml.acknowledged < count:
        assert time.monotonic() < deadline, f"{ml.acknowledged} of {count} acknowledged"
        time.sleep(0.002)


def kill_in_turn(procs: list[DaemonProcess], ml: MetricLogger) -> None:
    """Kill the node the logger writes to (the first, then the next...) once it has
    delivered POINTS more there; with FETCHML_LONG=1 restart each killed node."""
    for kill in range(KILLS):
        wait_acknowledged(ml, ml.acknowledged + POINTS)
        victim = procs[kill % len(procs)]
        victim.kill()
        if LONG:
            victim.start()
    wait_acknowledged(ml, ml.acknowledged + POINTS)  # and it goes on on the next node


def test_a_logger_survives_killing_two_nodes_with_every_point_once(
    three_nodes: tuple[list[DaemonProcess], Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fetchml.client.shipper")
    procs, base = three_nodes
    ml = MetricLogger(
        url=url_list(procs),
        api_key=ADMIN_KEY,
        name="failover",
        batch_size=25,
        flush_interval=0.005,
        max_backoff=0.05,
        close_timeout=60,
    )
    loop = Logging(ml)
    loop.start()
    began = time.monotonic()
    try:
        kill_in_turn(procs, ml)
    finally:
        loop.stop.set()
        loop.join()
    assert ml.close()
    stats = ml.stats()
    records = file_records(base / ml.run_id / "metrics.bin")
    print(
        f"{KILLS} nodes killed in {time.monotonic() - began:.1f} s: {loop.logged:,} points "
        f"logged, {len(records):,} in metrics.bin, {stats.recovered} found stored after a "
        f"lost answer, {stats.resent_batches} batches resent, {stats.reconnects} reconnects"
    )
    assert stats.acknowledged == loop.logged and stats.reconnects >= KILLS
    assert [(r.name, r.step, r.value) for r in records] == [
        ("v", i, float(i)) for i in range(loop.logged)
    ]
    assert "possible duplicates" not in caplog.text


def test_a_watch_follows_a_run_across_node_kills_and_sees_every_record_once(
    three_nodes: tuple[list[DaemonProcess], Path],
) -> None:
    """The writer and the watch move together (both name the nodes in the same order), so
    each node pushes what it appends itself; what the dead node wrote comes from the file."""
    procs, _ = three_nodes
    urls = url_list(procs)
    ml = MetricLogger(
        url=urls, api_key=ADMIN_KEY, name="watched", flush_interval=0.005, max_backoff=0.05
    )
    seen: list[int] = []
    total: list[int] = []
    """Set, with the number of points logged, once the logging has stopped."""

    async def follow() -> int:
        async with Client.connect(urls, ADMIN_KEY) as client:
            assert client.url == procs[0].url
            watch = client.watch(ml.run_id)
            page: MetricsPage
            async for page in watch:
                seen.extend(record.step for record in page.records)
                if total and len(seen) >= total[0]:
                    break
            return watch.reconnects

    reconnects: list[int] = []
    follower = threading.Thread(target=lambda: reconnects.append(asyncio.run(follow())))
    follower.start()
    loop = Logging(ml)
    loop.start()
    try:
        kill_in_turn(procs, ml)
    finally:
        loop.stop.set()
        loop.join()
        total.append(loop.logged + 1)
        ml.log("v", float(loop.logged), step=loop.logged)  # a push after `total` is set
        loop.logged += 1
        ml.close()
    follower.join(DEADLINE_S)
    assert not follower.is_alive(), f"the watch saw {len(seen)} of {loop.logged} records"
    print(f"watch: {len(seen):,} records over {reconnects[0]} reconnects")
    assert reconnects[0] >= KILLS
    assert seen == list(range(loop.logged))


async def test_the_worker_fails_over_to_the_next_url(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A job done through the first node; that node killed; the next job, queued on the
    second, is claimed there. A job's FETCHML_URL is the worker's whole list."""
    procs, _ = cluster(tmp_path, redis_server, 2)
    first, second = procs
    urls = url_list(procs)
    command = [sys.executable, "-c", "import os; print('URLS', os.environ['FETCHML_URL'])"]
    workdir = tmp_path / "jobs"
    worker: WorkerProcess | None = None
    try:
        async with Client.connect(first.url, ADMIN_KEY) as admin:
            job = await admin.queue_job("before", commit_of("fo-1"), spec={"command": command})
            worker = WorkerProcess(urls, WORKER_KEY, workdir, tmp_path / "w.log", "--name", "box")
            done = await wait_jobs(admin, [job.id])
        assert done[job.id].status_name == "completed", worker.log()
        assert f"URLS {urls}\n" in output_log(workdir, job)
        first.kill()
        async with Client.connect(second.url, ADMIN_KEY) as admin:
            job = await admin.queue_job("after", commit_of("fo-2"), spec={"command": command})
            done = await wait_jobs(admin, [job.id])
        assert (done[job.id].status_name, done[job.id].worker_id) == ("completed", "box")
        assert f"reconnecting to {second.url}" in worker.log()
    finally:
        if worker is not None:
            worker.reap()
        for proc in procs:
            proc.reap()
