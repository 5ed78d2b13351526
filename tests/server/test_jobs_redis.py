"""RedisJobQueue beyond the shared contract (tests/server/test_jobs.py runs that over both
backends): keys under the prefix, scripts Redis forgot, Redis unreachable or stalled,
a password, TLS, a dropped connection, Redis errors."""

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from fetchml.protocol.enums import ErrorCode, JobStatus
from fetchml.protocol.jobspec import parse_spec
from fetchml.server import jobs, jobs_redis
from fetchml.server.app import open_queue
from fetchml.server.errors import DatabaseError, ServiceUnavailable
from fetchml.server.jobs import JobQueue
from fetchml.server.jobs_redis import RedisJobQueue
from tests.support import jobqueues
from tests.support.clock import Clock
from tests.support.config import make_config
from tests.support.daemon import free_port
from tests.support.redis import RedisServer
from tests.support.tls import self_signed

REPO = Path(__file__).resolve().parents[2]
C1 = "0123456789abcdef0123456789abcdef01234567"

job_redis = jobqueues.job_redis


@pytest.fixture
def url(job_redis: RedisServer) -> str:
    with redis.Redis.from_url(job_redis.url) as client:
        client.flushall()
    return job_redis.url


@pytest.fixture
async def queue(url: str) -> AsyncIterator[RedisJobQueue]:
    q = await RedisJobQueue.open(url, "lab:")
    yield q
    await q.close()


async def add(q: JobQueue, name: str = "train", user: str = "alice") -> str:
    return (await q.enqueue(job_name=name, commit_id=C1, user=user, priority=5)).id


async def test_every_key_is_under_the_prefix_and_prefixes_are_apart(
    queue: RedisJobQueue, url: str
) -> None:
    other = await RedisJobQueue.open(url, "other:")
    try:
        mine = await add(queue)
        await add(queue, "eval", "bob")
        claimed = await queue.claim("w1")
        assert claimed is not None
        await queue.update(claimed.id, JobStatus.COMPLETED, "", None)
        await queue.cancel("eval", None)
        theirs = await add(other)
        assert await queue.get(theirs) is None and await other.get(mine) is None
        assert [j.id for j in await other.list_jobs(None)] == [theirs]
        assert await other.claim("w2") is not None
        assert await queue.claim("w2") is None
    finally:
        await other.close()
    with redis.Redis.from_url(url, decode_responses=True) as client:
        keys = client.keys("*")
    assert keys and all(k.startswith(("lab:", "other:")) for k in keys)


async def test_scripts_redis_forgot_are_sent_again(queue: RedisJobQueue, url: str) -> None:
    job_id = await add(queue)
    with redis.Redis.from_url(url) as client:
        client.script_flush()  # as after a Redis restart
    assert (await queue.get(job_id)) is not None
    claimed = await queue.claim("w1")
    assert claimed is not None and claimed.id == job_id


async def test_redis_down_is_service_unavailable_then_it_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    q = await RedisJobQueue.open(server.url, "lab:")
    try:
        job_id = await add(q)
        assert q.reachable is True
        server.kill()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: add(q),
            lambda: q.list_jobs(None),
            lambda: q.count_jobs("alice"),
            q.queue_length,
            lambda: q.get(job_id),
            lambda: q.claim("w1"),
            lambda: q.cancel("train", None),
            lambda: q.update(job_id, JobStatus.COMPLETED, "", None),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as info:
                await call()
            took = time.monotonic() - started
            print(f"SERVICE_UNAVAILABLE in {took * 1000:.1f} ms: {info.value.message}")
            assert took < 1.0  # refused at once: 10x a 100 ms target
            assert info.value.code is ErrorCode.SERVICE_UNAVAILABLE
            assert int(info.value.code) == 0x33
            assert info.value.message.startswith(
                f"job queue unavailable: Redis at 127.0.0.1:{server.port}: "
            )
        assert q.reachable is False
        server.start()  # the same port, empty (no persistence)
        assert await q.queue_length() == 0
        assert q.reachable is True
        assert await add(q) != job_id
    finally:
        await q.close()
        server.stop()


async def test_a_read_only_replica_is_service_unavailable(
    queue: RedisJobQueue, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As after a failover that left this node on the old primary, now a replica."""
    caplog.set_level(logging.WARNING, logger="fetchml.server.jobs_redis")
    job_id = await add(queue)
    with redis.Redis.from_url(url) as client:
        client.replicaof("127.0.0.1", str(free_port()))  # a primary that never answers
        try:
            for _ in range(2):
                with pytest.raises(ServiceUnavailable, match="read only replica"):
                    await queue.claim("w1")
        finally:
            client.replicaof("NO", "ONE")
    claimed = await queue.claim("w1")  # the data stayed (a replica keeps it until it syncs)
    assert claimed is not None and claimed.id == job_id
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # once when it goes, once when it is back
    assert "read only replica" in messages[0] and "answers again" in messages[1]


async def test_a_queue_opens_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # not started
    q = await RedisJobQueue.open(server.url, "lab:")
    try:
        with pytest.raises(ServiceUnavailable):
            await q.queue_length()
        server.start()
        assert await q.queue_length() == 0
    finally:
        await q.close()
        server.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers, as a stalled Redis."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


async def test_a_stalled_redis_never_hangs_a_request(
    silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_redis, "SOCKET_TIMEOUT_S", 0.2)
    q = await RedisJobQueue.open(f"redis://127.0.0.1:{silent_port}/0", "lab:")
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match=rf"Redis at 127.0.0.1:{silent_port}: "):
            await q.claim("w1")
        took = time.monotonic() - started
        print(f"a stalled Redis answered after {took * 1000:.0f} ms (socket timeout 200 ms)")
        assert took < 10 * 0.2
    finally:
        await q.close()


async def test_a_password_protected_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="pw").start()
    try:
        q = await RedisJobQueue.open(server.url, "lab:")
        try:
            job_id = await add(q)
            assert (await q.get(job_id)) is not None
        finally:
            await q.close()
        wrong = server.url.replace(":pw@", ":nope@")
        q = await RedisJobQueue.open(wrong, "lab:")
        try:
            with pytest.raises(ServiceUnavailable) as info:
                await q.get(job_id)
            assert "nope" not in info.value.message and "pw" not in info.value.message
            print(info.value.message)
        finally:
            await q.close()
    finally:
        server.stop()


async def test_tls_with_a_rediss_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "tls", tls=self_signed(tmp_path)).start()
    try:
        q = await RedisJobQueue.open(server.url, "lab:")
        try:
            job_id = await add(q)
            assert (await q.get(job_id)) is not None
        finally:
            await q.close()
    finally:
        server.stop()


async def test_a_dropped_connection_is_made_again(queue: RedisJobQueue, url: str) -> None:
    ids = [await add(queue, f"job{i}") for i in range(3)]
    with redis.Redis.from_url(url) as client:
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    assert [j.id for j in await queue.list_jobs(None)] == ids[::-1]  # no error, nothing lost
    assert queue.reachable is True


async def test_a_redis_error_is_database_error(
    queue: RedisJobQueue, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with redis.Redis.from_url(url) as client:
        client.set("lab:queue", "not a sorted set")
    caplog.set_level(logging.ERROR, logger="fetchml.server.jobs_redis")
    with pytest.raises(DatabaseError) as info:
        await queue.queue_length()
    assert (info.value.code, info.value.message) == (ErrorCode.DATABASE_ERROR, "database error")
    logged = caplog.records[0].exc_info
    assert logged is not None and "WRONGTYPE" in str(logged[1])


async def test_a_closed_queue_refuses_calls(url: str) -> None:
    q = await RedisJobQueue.open(url, "lab:")
    await q.close()
    await q.close()
    with pytest.raises(DatabaseError, match="closed"):
        await q.claim("w1")


async def test_a_job_deleted_by_hand_breaks_nothing(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock.install(monkeypatch, jobs)
    q = await RedisJobQueue.open(url, "lab:", keep_days=1, lease_s=60)
    try:
        spec = '{"command": ["x"]}'
        for name in ("lost", "done"):
            await q.enqueue(
                job_name=name, commit_id=C1, user="alice", priority=5, args=spec,
                spec=parse_spec(spec),
            )  # fmt: skip
            claimed = await q.claim("w1")
            assert claimed is not None
            if name == "done":
                await q.update(claimed.id, JobStatus.COMPLETED, "", None)
            with redis.Redis.from_url(url) as client:
                client.delete(f"lab:job:{claimed.id}")
        clock.t += 2 * 86400  # the lease of one and the history of the other are due
        assert await q.queue_length() == 0
        assert await q.list_jobs(None) == []
        assert await q.claim("w2") is None
    finally:
        await q.close()


STANDALONE = """
import sys
from pathlib import Path
import anyio
from fetchml.server.app import App
from fetchml.server.app import open_queue
from fetchml.server.jobs_sqlite import SqliteJobQueue
from tests.support.config import make_config

async def main() -> None:
    config = make_config(Path(sys.argv[1]))
    App(config)
    queue = await open_queue(config)
    assert isinstance(queue, SqliteJobQueue)
    await queue.close()

anyio.run(main)
assert "redis" not in sys.modules, "standalone imported redis"
"""


def test_standalone_never_imports_redis(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", STANDALONE, str(tmp_path)], check=True, cwd=REPO, timeout=60
    )


async def test_cluster_mode_opens_the_redis_queue(url: str, tmp_path: Path) -> None:
    config = make_config(tmp_path, cluster={"redis_url": url, "key_prefix": "lab:"})
    q = await open_queue(config)
    try:
        assert isinstance(q, RedisJobQueue)
        job_id = await add(q)
    finally:
        await q.close()
    with redis.Redis.from_url(url) as client:
        assert client.exists(f"lab:job:{job_id}")
    assert not (tmp_path / "jobs.sqlite3").exists()
