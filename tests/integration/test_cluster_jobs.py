"""Jobs in cluster mode, against real daemons and a real redis-server: every job request is
served from Redis, any node sees and claims any node's jobs, 50 claimers on 3 nodes race
for one job with one winner, a dropped Redis connection loses nothing, a killed Redis makes
job requests SERVICE_UNAVAILABLE (and nothing else) until it is back, and a password works."""

import asyncio
import time
from pathlib import Path
from typing import Any

import redis

from fetchml.protocol.enums import ErrorCode, JobStatus
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    QueueJobSpec,
    Request,
    Status,
    UpdateJob,
)
from fetchml.protocol.responses import Data
from fetchml.server.jobs_redis import RedisJobQueue
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import hash_of
from tests.support.redis import RedisServer
from tests.support.wire import (
    RawClient,
    create,
    data_of,
    error_of,
    log,
    queue,
    status_of,
    success_of,
)

SPEC = '{"command": ["python", "train.py"]}'
WENDY = hash_of("wendy")


async def node(start_daemon: DaemonFactory, url: str, **sections: Any) -> Daemon:
    """A cluster node; all nodes of a test share one data directory."""
    daemon: Daemon = await start_daemon(cluster={"redis_url": url}, **sections)
    assert daemon.app.ctx is not None and isinstance(daemon.app.ctx.jobs, RedisJobQueue)
    return daemon


async def jobs_of(client: RawClient) -> dict[str, Any]:
    status = status_of(await client.call(Status(key_hash=hash_of("admin"))))
    return {job["id"]: job for job in status["jobs"]}


async def test_job_requests_are_served_from_redis_by_every_node(
    start_daemon: DaemonFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    a = await (await node(start_daemon, redis_server.url)).client()
    b = await (await node(start_daemon, redis_server.url)).client()
    cid = await create(a, "cluster", user="alice")
    plain = await queue(a, "alice", cid, "plain", priority=3)
    spec_req = QueueJobSpec(
        key_hash=hash_of("alice"), commit_id=cid, priority=9, job_name="spec", spec=SPEC
    )
    spec = data_of(await b.call(spec_req), "job")
    assert set(await jobs_of(a)) == set(await jobs_of(b)) == {plain["id"], spec["id"]}
    assert status_of(await b.call(Status(key_hash=hash_of("admin"))))["queue_length"] == 2

    claimed = data_of(await a.call(ClaimJob(key_hash=WENDY, worker_id="gpu-1")), "job")
    assert (claimed["id"], claimed["claimed_by"]) == (spec["id"], "wendy")  # priority first
    beat = UpdateJob(key_hash=WENDY, job_id=spec["id"], status=JobStatus.RUNNING, worker_id="gpu-1")
    success_of(await b.call(beat), f"job {spec['id']} running")
    done = UpdateJob(
        key_hash=WENDY, job_id=spec["id"], status=JobStatus.COMPLETED, worker_id="gpu-1"
    )
    success_of(await a.call(done), f"job {spec['id']} completed")
    success_of(await b.call(CancelJob(key_hash=hash_of("alice"), job_name="plain")))
    statuses = {job_id: job["status"] for job_id, job in (await jobs_of(a)).items()}
    assert statuses == {spec["id"]: "completed", plain["id"]: "cancelled"}

    with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
        assert r.hget(f"fetchml:job:{spec['id']}", "status") == str(int(JobStatus.COMPLETED))
        assert all(key.startswith("fetchml:") for key in r.keys("*"))
    assert not (tmp_path / "jobs.sqlite3").exists()  # nothing went to SQLite


async def test_50_claimers_on_3_nodes_one_job_one_winner(
    start_daemon: DaemonFactory, redis_server: RedisServer
) -> None:
    nodes = [await node(start_daemon, redis_server.url) for _ in range(3)]
    clients = [await nodes[i % 3].client() for i in range(50)]
    cid = await create(clients[0], "race", user="alice")
    job = await queue(clients[0], "alice", cid, "the-one")

    async def claim(i: int, client: RawClient) -> Any:
        return data_of(await client.call(ClaimJob(key_hash=WENDY, worker_id=f"w{i}")), "job")

    answers = await asyncio.gather(*(claim(i, c) for i, c in enumerate(clients)))
    winners = [answer for answer in answers if answer is not None]
    assert len(winners) == 1 and winners[0]["id"] == job["id"]
    held = (await jobs_of(clients[1]))[job["id"]]
    assert (held["status"], held["worker_id"]) == ("running", winners[0]["worker_id"])


async def test_a_dropped_redis_connection_loses_nothing(
    start_daemon: DaemonFactory, redis_server: RedisServer
) -> None:
    client = await (await node(start_daemon, redis_server.url)).client()
    cid = await create(client, "dropped", user="alice")
    queued = [(await queue(client, "alice", cid, f"job{i}"))["id"] for i in range(5)]
    with redis.Redis.from_url(redis_server.url) as r:
        assert r.client_kill_filter(_type="normal", skipme=True) >= 1
    assert list(await jobs_of(client)) == queued[::-1]  # every job, and no error
    claimed = data_of(await client.call(ClaimJob(key_hash=WENDY, worker_id="w1")), "job")
    assert claimed["id"] == queued[0]


async def test_redis_killed_then_restarted(
    start_daemon: DaemonFactory, redis_server: RedisServer
) -> None:
    client = await (await node(start_daemon, redis_server.url)).client()
    cid = await create(client, "outage", user="alice")
    job = await queue(client, "alice", cid, "before")
    redis_server.kill()

    requests: list[Request] = [
        QueueJobSpec(key_hash=hash_of("alice"), commit_id=cid, priority=5, job_name="x", spec=SPEC),
        Status(key_hash=hash_of("alice")),
        ClaimJob(key_hash=WENDY, worker_id="w1"),
        UpdateJob(key_hash=WENDY, job_id=job["id"], status=JobStatus.RUNNING, worker_id="w1"),
        CancelJob(key_hash=hash_of("alice"), job_name="before"),
    ]
    for request in requests:
        started = time.monotonic()
        error = error_of(await client.call(request), ErrorCode.SERVICE_UNAVAILABLE)
        took = time.monotonic() - started
        print(f"{type(request).__name__}: SERVICE_UNAVAILABLE in {took * 1000:.1f} ms")
        assert took < 1.0  # at once: 10x a 100 ms target
        assert error.message.startswith(
            f"job queue unavailable: Redis at 127.0.0.1:{redis_server.port}: "
        )
    await log(client, cid, [(0, 1.0, "loss")], user="alice")  # metrics go on

    redis_server.start()  # the same port; this Redis keeps no data across a restart
    again = await queue(client, "alice", cid, "after")
    claimed = await client.call(ClaimJob(key_hash=WENDY, worker_id="w1"))
    assert isinstance(claimed, Data) and data_of(claimed, "job")["id"] == again["id"]


async def test_a_password_protected_redis(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis-pw", password="pw").start()
    try:
        assert server.url.startswith("redis://:pw@")
        client = await (await node(start_daemon, server.url)).client()
        cid = await create(client, "password", user="alice")
        job = await queue(client, "alice", cid, "secret")
        assert list(await jobs_of(client)) == [job["id"]]
        wrong = await (await node(start_daemon, server.url.replace(":pw@", ":no@"))).client()
        error = error_of(
            await wrong.call(Status(key_hash=hash_of("alice"))), ErrorCode.SERVICE_UNAVAILABLE
        )
        print(error.message)
        assert ":no@" not in error.message
    finally:
        server.stop()
