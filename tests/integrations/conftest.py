"""Framework integration tests: one daemon subprocess for the directory (the loggers are
synchronous, so the daemon runs outside the test's thread), Keras on its JAX backend, and
a reader of what a run holds on the daemon."""

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fetchml.client import Client
from tests.support.daemon import DaemonProcess, daemon_at
from tests.support.keys import ADMIN_KEY
from tests.support.runs import Stored

os.environ["KERAS_BACKEND"] = "jax"  # before any test module imports keras


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = daemon_at(tmp_path_factory.mktemp("daemon")).start()
    yield proc
    proc.close()


@pytest.fixture
def logger_args(server: DaemonProcess) -> dict[str, Any]:
    """The MetricLogger arguments that reach the test daemon."""
    return {"url": server.url, "api_key": ADMIN_KEY}


@pytest.fixture
def read_run(server: DaemonProcess) -> Callable[[str | None], Stored]:
    def read(run_id: str | None) -> Stored:
        assert run_id is not None

        async def fetch() -> Stored:
            async with Client.connect(server.url, ADMIN_KEY) as client:
                page = await client.list_runs_page({"id": run_id})
                assert page.total == 1, page
                run = page.runs[0].run
                assert run is not None
                return Stored(run, await client.query(run_id))

        return asyncio.run(fetch())

    return read
