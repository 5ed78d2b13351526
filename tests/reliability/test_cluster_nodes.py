"""Cluster nodes as real processes on one data directory: several writers on every node
append to one experiment at once, and a node is SIGKILLed while it writes. Every
acknowledged record is in the file exactly once, a torn tail is cut exactly once, and
every node answers with all of it (per-name queries included) right after the last
acknowledgement.

3 nodes x 2 writers x 8 batches by default; FETCHML_LONG=1 runs 3 x 10 x 50.
"""

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetchml.protocol.metrics import encode_record
from fetchml.protocol.requests import CreateExperiment, LogMetrics, MetricPoint, QueryMetrics
from fetchml.protocol.responses import Success
from tests.support.config import raw_config, write_config
from tests.support.daemon import DaemonProcess, free_port
from tests.support.experiments import STAMP, file_records
from tests.support.keys import ADMIN
from tests.support.redis import RedisServer
from tests.support.wire import RawClient, page_of, query_all

LONG = os.environ.get("FETCHML_LONG") == "1"
WRITERS = 10 if LONG else 2
BATCHES = 50 if LONG else 8
POINTS = 5
BIG = 2000
"""Records in each batch of the node that is killed."""
COMMIT = bytes.fromhex("c1" * 20)


def node(home: Path, shared: Path, redis: RedisServer, i: int) -> DaemonProcess:
    port = free_port()
    raw = raw_config(
        home / f"node{i}",
        server={"port": port, "shutdown_timeout_s": 5},
        storage={"base_path": str(shared), "jobs_db": str(home / f"jobs{i}.sqlite3")},
        cluster={"redis_url": redis.url},
    )
    (home / f"node{i}").mkdir()
    config = write_config(home / f"node{i}" / "config.yaml", raw)
    return DaemonProcess(config, home / f"node{i}.log", data=shared, port=port, measured=False)


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[DaemonProcess]]:
    shared = tmp_path / "shared"
    daemons = [node(tmp_path, shared, redis_server, i).spawn() for i in range(3)]
    try:
        for d in daemons:
            d.ready()
        yield daemons
    finally:
        for d in daemons:
            d.stop()


def batch(name: str, start: int) -> LogMetrics:
    points = tuple(MetricPoint(s, float(s), name) for s in range(start, start + POINTS))
    return LogMetrics(key_hash=ADMIN, commit_id=COMMIT, metrics=points)


async def writer(d: DaemonProcess, name: str, batches: int) -> list[int]:
    """Appends `batches` batches named `name`; the steps acknowledged."""
    client = await d.client()
    acked: list[int] = []
    try:
        for n in range(batches):
            response = await client.call(batch(name, n * POINTS))
            assert isinstance(response, Success), response
            acked += range(n * POINTS, (n + 1) * POINTS)
    finally:
        await client.ws.close()
    return acked


async def named(client: RawClient, name: str) -> list[int]:
    """The steps of one name, through a per-name query (the sidecars' path)."""
    steps: list[int] = []
    after = 0
    while True:
        query = QueryMetrics(key_hash=ADMIN, commit_id=COMMIT, name=name, after=after)
        page = page_of(await client.call(query))
        steps += [r.step for r in page.records]
        if page.next == 0:
            return steps
        after = page.next


async def check_every_node(
    daemons: list[DaemonProcess], acked: dict[str, list[int]], shared: Path
) -> None:
    """Each acknowledged record once in the file, and every node answers with the file."""
    on_disk = file_records(shared / COMMIT.hex() / "metrics.bin")
    counts = Counter((r.name, r.step) for r in on_disk)
    for name, steps in acked.items():
        for step in steps:
            assert counts[(name, step)] == 1, (name, step, counts[(name, step)])
    for d in daemons:
        client = await d.client()
        for name, steps in acked.items():
            assert await named(client, name) == steps, (d.url, name)
        assert await query_all(client, COMMIT) == on_disk
        await client.ws.close()


async def create(d: DaemonProcess) -> None:
    client = await d.client()
    response = await client.call(CreateExperiment(key_hash=ADMIN, commit_id=COMMIT, job_name="x"))
    assert isinstance(response, Success), response
    await client.ws.close()


async def test_writers_on_three_nodes_each_acknowledged_record_once(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    await create(nodes[0])
    names = [f"n{i}w{w}" for i in range(len(nodes)) for w in range(WRITERS)]
    results = await asyncio.gather(*(writer(nodes[int(name[1])], name, BATCHES) for name in names))
    acked = dict(zip(names, results, strict=True))
    await check_every_node(nodes, acked, tmp_path / "shared")


async def test_a_node_killed_while_writing_leaves_a_tail_cut_once(
    nodes: list[DaemonProcess], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    metrics = shared / COMMIT.hex() / "metrics.bin"
    await create(nodes[0])
    victim, survivors = nodes[2], nodes[:2]
    acked: dict[str, list[int]] = {"victim": []}
    client = await victim.client()
    for n in range(3):  # big batches in flight; the kill lands after the first is acknowledged
        steps = range(n * BIG, (n + 1) * BIG)
        points = tuple(MetricPoint(s, float(s), "victim") for s in steps)
        await client.send(LogMetrics(key_hash=ADMIN, commit_id=COMMIT, metrics=points))
    assert isinstance(await client.recv(), Success)
    victim.stop(signal.SIGKILL)
    # What a node killed inside a write leaves at the end: part of a record.
    with open(metrics, "ab") as f:
        f.write(encode_record(STAMP, 1, 1.0, b"torn")[:13])
    before = metrics.stat().st_size
    survivors_acked = await asyncio.gather(
        *(writer(d, f"n{i}", BATCHES) for i, d in enumerate(survivors))
    )
    acked.update({f"n{i}": steps for i, steps in enumerate(survivors_acked)})
    torn = [p for p in metrics.parent.iterdir() if p.name.startswith("metrics.bin.torn-")]
    assert len(torn) == 1, torn
    assert 13 <= torn[0].stat().st_size <= before
    victim_steps = [r.step for r in file_records(metrics) if r.name == "victim"]
    assert victim_steps[:BIG] == list(range(BIG))  # the acknowledged batch
    assert len(victim_steps) % BIG == 0  # and whole batches after it, never a part
    acked["victim"] = victim_steps
    await check_every_node(survivors, acked, shared)
