"""Shared fixtures: a real daemon on 127.0.0.1 port 0 in the test's event loop."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.inproc import Daemon, DaemonFactory, in_process_daemons
from tests.support.redis import RedisServer


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Start real daemons in this event loop: `await start_daemon(server={...})`."""
    async with in_process_daemons(tmp_path) as start:
        yield start


@pytest.fixture
async def daemon(start_daemon: DaemonFactory) -> Daemon:
    return await start_daemon()  # type: ignore[no-any-return]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, killed at the end."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
