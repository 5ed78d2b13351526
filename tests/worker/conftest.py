"""Worker fixtures: a daemon in the test's event loop (leases of 4 s, so heartbeats go
every second), an admin Client on it, and `start_worker(*args, key=...)`, which runs
`fetchml worker` as a subprocess on `tmp_path/jobs` (killed at the end if still running)."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fetchml.client.connection import Client
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN_KEY, WORKER_KEY
from tests.support.worker import StartWorker, WorkerProcess

LEASE_S = 4


@pytest.fixture
async def jobs_daemon(start_daemon: DaemonFactory) -> Daemon:
    return await start_daemon(jobs={"lease_s": LEASE_S})  # type: ignore[no-any-return]


@pytest.fixture
async def admin(jobs_daemon: Daemon) -> AsyncIterator[Client]:
    async with Client.connect(jobs_daemon.url, ADMIN_KEY) as client:
        yield client


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


@pytest.fixture
def start_worker(jobs_daemon: Daemon, workdir: Path, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start(*args: str, key: str = WORKER_KEY, name: str = "box") -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        proc = WorkerProcess(jobs_daemon.url, key, workdir, log, "--name", name, *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.reap()
