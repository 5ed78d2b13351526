"""Cluster nodes on one data directory (in-process daemons in cluster mode, each with a
jobs database of its own): what one node's clients see of another node's appends, run
changes and prunes, at once or within the watch visibility window."""

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from fetchml.protocol.enums import ErrorCode, PruneType
from fetchml.protocol.requests import (
    GetExperiment,
    ListRuns,
    Prune,
    QueryMetrics,
    UpdateRun,
)
from fetchml.protocol.responses import Error, Success
from fetchml.server.freshness import TICK_S
from tests.support.experiments import write_experiment
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN
from tests.support.redis import RedisServer
from tests.support.watch import (
    Stream,
    batch,
    commit_of,
    create,
    on_disk,
    start_watch,
    watch,
    write,
)
from tests.support.wire import RawClient, data_of, error_of, page_of, query_all

WINDOW_S = 10 * 0.2
"""The visibility window asserted: ten times the 200 ms target."""


async def nodes(
    start_daemon: DaemonFactory, tmp_path: Path, redis: RedisServer, n: int = 2
) -> list[Daemon]:
    """`n` cluster nodes on one data directory."""
    return [
        await start_daemon(
            cluster={"redis_url": redis.url},
            storage={
                "base_path": str(tmp_path / "shared"),
                "jobs_db": str(tmp_path / f"jobs-{i}.sqlite3"),
            },
        )
        for i in range(n)
    ]


async def test_a_watcher_on_b_sees_every_record_appended_on_a_once_in_order(
    start_daemon: DaemonFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = await nodes(start_daemon, tmp_path, redis_server)
    commit = commit_of(1)
    writer = await create(a, commit)
    await write(writer, batch(commit, 0, 3))
    watcher = await start_watch(b, watch(commit))
    stream = Stream(0)
    await stream.read_until(watcher, 3)
    latencies = []
    for n in range(8):
        await write(writer, batch(commit, 3 + 4 * n, 4))
        acked = time.monotonic()
        await asyncio.wait_for(stream.read_until(watcher, 7 + 4 * n), WINDOW_S)
        latencies.append(time.monotonic() - acked)
    print(
        f"cross-node watch latency (stat every {TICK_S * 1000:.0f} ms): "
        f"median {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} appends"
    )
    assert max(latencies) <= WINDOW_S
    stream.check_contiguous()
    assert stream.records == on_disk(a, commit)
    assert [r.step for r in stream.records] == list(range(35))


async def test_b_answers_with_what_a_acknowledged_at_once(
    start_daemon: DaemonFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = await nodes(start_daemon, tmp_path, redis_server)
    commit = commit_of(2)
    on_a = await create(a, commit)
    on_b = await b.client()
    await write(on_b, batch(commit, 0, 2))  # B holds the file open for appending
    assert len(await query_all(on_b, commit)) == 2
    runs = data_of(await on_b.call(ListRuns(key_hash=ADMIN, filter="{}")), "runs")
    assert runs["total"] == 1

    await write(on_a, batch(commit, 2, 3, name="acc"))
    await run_patch(on_a, commit, {"status": "finished", "params": {"lr": 0.5}})

    done = json.dumps({"status": "finished"})
    listed = data_of(await on_b.call(ListRuns(key_hash=ADMIN, filter=done)), "runs")
    assert [(r["id"], r["metrics_count"]) for r in listed["runs"]] == [(commit.hex(), 5)]
    named = page_of(await on_b.call(QueryMetrics(key_hash=ADMIN, commit_id=commit, name="acc")))
    assert [r.step for r in named.records] == [2, 3, 4]
    records = await query_all(on_b, commit)
    assert [(r.name, r.step) for r in records] == [("loss", 0), ("loss", 1)] + [
        ("acc", s) for s in range(2, 5)
    ]
    get = GetExperiment(key_hash=ADMIN, commit_id=commit)
    experiment = data_of(await on_b.call(get), "experiment")
    assert experiment["metrics_count"] == 5
    assert {m["name"]: m["step"] for m in experiment["metrics"]} == {"loss": 1, "acc": 4}
    assert experiment["run"]["status"] == "finished"


async def run_patch(client: RawClient, commit: bytes, patch: dict[str, Any]) -> Any:
    request = UpdateRun(key_hash=ADMIN, commit_id=commit, patch=json.dumps(patch))
    return data_of(await client.call(request), "run")


async def test_concurrent_update_runs_on_two_nodes_all_land(
    start_daemon: DaemonFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = await nodes(start_daemon, tmp_path, redis_server)
    commit = commit_of(3)
    await create(a, commit)
    clients = [await node.client() for node in (a, b) for _ in range(3)]

    async def updates(i: int) -> None:
        for n in range(4):
            await run_patch(clients[i], commit, {"params": {f"p{i}-{n}": n}})

    await asyncio.gather(*(updates(i) for i in range(len(clients))))
    run = await run_patch(clients[0], commit, {})
    assert run["params"] == {f"p{i}-{n}": n for i in range(len(clients)) for n in range(4)}


async def test_prune_on_a_while_b_appends_answers_not_found_and_never_recreates(
    start_daemon: DaemonFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = await nodes(start_daemon, tmp_path, redis_server)
    base = tmp_path / "shared"
    commit = commit_of(4)
    write_experiment(base, commit, timestamp=1_700_000_000, user="admin")
    on_b = await b.client()
    acked = 0

    async def append_until_gone() -> Error:
        nonlocal acked
        while True:
            response = await on_b.call(batch(commit, acked, 1))
            if not isinstance(response, Success):
                assert isinstance(response, Error), response
                return response
            acked += 1

    appending = asyncio.create_task(append_until_gone())
    while acked < 20:
        await asyncio.sleep(0.001)
    on_a = await a.client()
    prune = Prune(key_hash=ADMIN, prune_type=PruneType.OLDER_THAN_DAYS, value=1)
    assert data_of(await on_a.call(prune), "pruned") == {"pruned": [commit.hex()]}
    refused = await asyncio.wait_for(appending, 30)
    assert refused.code == ErrorCode.RESOURCE_NOT_FOUND, refused
    error_of(await on_b.call(batch(commit, acked, 1)), ErrorCode.RESOURCE_NOT_FOUND)
    assert not [name for name in os.listdir(base) if name.startswith(".pruned-")]
    assert not os.path.lexists(base / commit.hex())


async def test_appends_on_a_keep_a_run_alive_on_b(
    start_daemon: DaemonFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = await nodes(start_daemon, tmp_path, redis_server)
    assert b.app.ctx is not None
    now = time.time()
    b.app.ctx.runs.clock = lambda: now + 400  # B's clock: past crash_after_s (300 s)
    commit = commit_of(5)
    on_a = await create(a, commit)
    await run_patch(on_a, commit, {"status": "running"})
    await write(on_a, batch(commit, 0, 1))
    metrics = tmp_path / "shared" / commit.hex() / "metrics.bin"
    os.utime(metrics, (now - 1000, now - 1000))
    on_b = await b.client()
    get = GetExperiment(key_hash=ADMIN, commit_id=commit)
    assert data_of(await on_b.call(get), "experiment")["run"]["status"] == "crashed"
    await write(on_a, batch(commit, 1, 1))
    os.utime(metrics, (now + 350, now + 350))  # A's append, 50 s before B's clock
    assert data_of(await on_b.call(get), "experiment")["run"]["status"] == "running"
    running = json.dumps({"status": "running"})
    listed = data_of(await on_b.call(ListRuns(key_hash=ADMIN, filter=running)), "runs")
    assert [r["id"] for r in listed["runs"]] == [commit.hex()]


async def test_prune_on_a_ends_watchers_on_b(
    start_daemon: DaemonFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = await nodes(start_daemon, tmp_path, redis_server)
    commit = commit_of(6)
    write_experiment(tmp_path / "shared", commit, timestamp=1_700_000_000, user="admin")
    watcher = await start_watch(b, watch(commit))
    await write(await b.client(), batch(commit, 0, 2))
    await Stream(0).read_until(watcher, 2)
    on_a = await a.client()
    prune = Prune(key_hash=ADMIN, prune_type=PruneType.OLDER_THAN_DAYS, value=1)
    assert data_of(await on_a.call(prune), "pruned") == {"pruned": [commit.hex()]}
    pruned = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(watcher.recv(), WINDOW_S)
    print(f"watcher on another node ended {(time.monotonic() - pruned) * 1000:.0f} ms after prune")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert b.app.ctx is not None and b.app.ctx.store.held(commit.hex()) is None


async def test_b_reads_what_a_pruned_and_made_again_anew(
    start_daemon: DaemonFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = await nodes(start_daemon, tmp_path, redis_server)
    commit = commit_of(7)
    write_experiment(tmp_path / "shared", commit, timestamp=1_700_000_000, user="admin")
    on_b = await b.client()
    await write(on_b, batch(commit, 0, 2, name="old"))  # B holds the file open
    assert len(await query_all(on_b, commit)) == 2
    prune = Prune(key_hash=ADMIN, prune_type=PruneType.OLDER_THAN_DAYS, value=1)
    on_a = await create(a, commit_of(8))  # the newest, kept
    assert data_of(await on_a.call(prune), "pruned") == {"pruned": [commit.hex()]}
    get = GetExperiment(key_hash=ADMIN, commit_id=commit)
    error_of(await on_b.call(get), ErrorCode.RESOURCE_NOT_FOUND)
    await write(await create(a, commit), batch(commit, 0, 1, name="anew"))
    assert [r.name for r in await query_all(on_b, commit)] == ["anew"]
    assert data_of(await on_b.call(get), "experiment")["metrics_count"] == 1
