"""The job queue backends the contract tests run over: one SQLite file, or one Redis (a real
redis-server per test module, flushed before each test).

A test module takes the fixtures by assignment: `store = jobqueues.store` and
`job_redis = jobqueues.job_redis`; then `await store.open(lease_s=...)` gives a fresh queue
object on the same jobs (a reopen, or a second daemon of a cluster)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fetchml.server.jobs import JobQueue, SqliteJobQueue
from fetchml.server.jobs_redis import RedisJobQueue
from tests.support.redis import RedisServer

PREFIX = "test:"


class JobStore:
    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location
        """The SQLite file's path, or the Redis URL."""

    async def open(self, keep_days: float = 90.0, lease_s: float = 0.0) -> JobQueue:
        if self.kind == "sqlite":
            return await SqliteJobQueue.open(Path(self.location), keep_days, lease_s)
        return await RedisJobQueue.open(self.location, PREFIX, keep_days, lease_s)

    def __repr__(self) -> str:
        return self.kind


async def open_store(kind: str, location: str) -> JobQueue:
    """For a subprocess that gets `kind` and `location` on its command line."""
    return await JobStore(kind, location).open()


@pytest.fixture(scope="module")
def job_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return JobStore("sqlite", str(tmp_path / "state" / "jobs.db"))
    server: RedisServer = request.getfixturevalue("job_redis")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    return JobStore("redis", server.url)
