"""The worker's connection: no keepalive pings of its own, and a call left unanswered for
CALL_TIMEOUT_S takes the daemon for gone: the connection is dropped, opened again, and the
call runs again on the new one."""

import anyio
import pytest

from fetchml.client.connection import Client
from fetchml.client.settings import Settings
from fetchml.worker import link
from tests.support.inproc import Daemon
from tests.support.keys import WORKER_KEY


async def test_an_unanswered_call_reconnects_and_runs_again(
    jobs_daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link, "CALL_TIMEOUT_S", 0.3)
    worker = link.Link(Settings(jobs_daemon.url, WORKER_KEY))
    used: list[Client] = []

    async def whoami(client: Client) -> str:
        used.append(client)
        if len(used) == 1:
            await anyio.sleep_forever()  # a daemon that never answers
        return (await client.whoami()).user

    try:
        assert await worker.call(whoami) == "wendy"
        assert len(used) == 2 and used[0] is not used[1]
        assert used[0].closed  # dropped
        assert not used[1].closed
        assert used[1]._ws.ping_interval is None  # its own calls time out instead
    finally:
        await worker.close()
