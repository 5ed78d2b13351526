"""The job queue backends the contract tests run over: one SQLite file, or one Redis (a real
redis-server per test module, flushed before each test).

A test module takes the fixtures by assignment: `store = jobqueues.store` and
`job_redis = jobqueues.job_redis`; then `await store.open(lease_s=...)` gives a fresh queue
object on the same jobs (a reopen, or a second daemon of a cluster). `start_daemon =
jobqueues.start_daemon` runs a module's daemon tests standalone and in cluster mode."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fetchml.server.config import Config
from fetchml.server.jobs import JobQueue
from fetchml.server.jobs_redis import RedisJobQueue
from fetchml.server.jobs_sqlite import SqliteJobQueue
from tests.support.inproc import Daemon, DaemonFactory, in_process_daemons
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
    return JobStore("redis", flushed(request))


def flushed(request: pytest.FixtureRequest) -> str:
    """The URL of the module's Redis, emptied."""
    server: RedisServer = request.getfixturevalue("job_redis")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    return server.url


@pytest.fixture(params=["standalone", "cluster"])
async def start_daemon(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DaemonFactory]:
    """tests/conftest.py's start_daemon, standalone and then with jobs in Redis."""
    cluster = {"redis_url": flushed(request)} if request.param == "cluster" else {}
    async with in_process_daemons(tmp_path) as start:

        async def start_in_mode(config: Config | None = None, **sections: Any) -> Daemon:
            sections.setdefault("cluster", cluster)
            return await start(config, **sections)  # type: ignore[no-any-return]

        yield start_in_mode
