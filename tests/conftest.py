"""Shared fixtures: a real daemon on 127.0.0.1 port 0 in the test's event loop."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.inproc import Daemon, DaemonFactory, in_process_daemons


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Start real daemons in this event loop: `await start_daemon(server={...})`."""
    async with in_process_daemons(tmp_path) as start:
        yield start


@pytest.fixture
async def daemon(start_daemon: DaemonFactory) -> Daemon:
    return await start_daemon()  # type: ignore[no-any-return]
