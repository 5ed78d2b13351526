"""A daemon with `auth.require_handshake_key`: every client path sends the raw key at the upgrade."""

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fetchml.client import Client, MetricLogger, cli
from tests.support.experiments import commit_of
from tests.support.inproc import DaemonFactory
from tests.support.keys import ADMIN_KEY

C = commit_of("handshake-key")


async def test_every_client_path_passes_a_daemon_that_requires_the_key(
    start_daemon: DaemonFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = await start_daemon(auth={"require_handshake_key": True})
    with pytest.raises(InvalidStatus) as refused:
        await connect(daemon.url)  # the 16-byte hash alone is not enough to get in
    assert refused.value.response.status_code == 401

    async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:
        assert (await c.whoami()).user == "admin"
        await c.create_experiment(C, "train")

    def log() -> None:
        with MetricLogger(C, url=daemon.url, api_key=ADMIN_KEY) as logger:
            for step in range(5):
                logger.log("loss", 1.0 / (step + 1), step=step)

    await asyncio.to_thread(log)

    async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:
        async with c.watch(C) as watch:
            page = await anext(watch)
        assert [r.step for r in page.records] == [0, 1, 2, 3, 4]

    argv = ["--url", daemon.url, "--api-key", ADMIN_KEY, "watch", C, "--json", "--exit-after", "5"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
