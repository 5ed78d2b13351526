"""SIGHUP closes what the reloaded auth section no longer admits: connections bound to a
removed key, watchers whose role lost jobs:read or the read scope of what they watch,
connections without a handshake key once one is required, peers outside a new ip_whitelist."""

import asyncio
import signal
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fetchml.protocol.requests import CreateExperiment, LogMetric, WatchMetrics
from fetchml.protocol.responses import Data, Success
from tests.support.config import raw_config, write_config
from tests.support.daemon import DaemonProcess, daemons
from tests.support.keys import KEYS, hash_of
from tests.support.wire import RawClient, user

COMMIT = bytes.fromhex("5e" * 20)


async def watcher(daemon: DaemonProcess, who: str) -> RawClient:
    client = await daemon.client()
    assert isinstance(
        await client.call(WatchMetrics(key_hash=hash_of(who), commit_id=COMMIT)), Success
    )
    return client


async def closes(client: RawClient) -> tuple[int, str]:
    """The close code and reason the daemon sends; pushes before it are skipped."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


async def reload_and_wait(
    daemon: DaemonProcess, config: Path, raw: dict[str, object], *gone: RawClient
) -> list[tuple[int, str]]:
    write_config(config, raw)
    started = time.monotonic()
    daemon.send_signal(signal.SIGHUP)
    closed = await asyncio.wait_for(asyncio.gather(*(closes(c) for c in gone)), 30)
    took = time.monotonic() - started
    print(f"\n{len(gone)} connections closed {took * 1000:.0f} ms after SIGHUP (target 1 s)")
    assert took <= 10.0
    return closed


async def test_reload_closes_what_the_new_auth_section_no_longer_admits(tmp_path: Path) -> None:
    raw = raw_config(tmp_path)
    auth = raw["auth"]
    auth["roles"]["viewer"] = {"permissions": ["jobs:read"], "scope": "all"}
    auth["api_keys"]["ana"]["role"] = "viewer"
    config = write_config(tmp_path / "config.yaml", raw)
    with daemons(tmp_path) as start:
        daemon = await start(config).wait_ready()
        admin = await daemon.client()
        made = await admin.call(
            CreateExperiment(key_hash=hash_of("admin"), commit_id=COMMIT, job_name="j")
        )
        assert isinstance(made, Success)
        bob = await daemon.client(additional_headers={"X-API-Key": KEYS["bob"][1]})
        alice = await daemon.client(additional_headers={"X-API-Key": KEYS["alice"][1]})
        ana_watch = await watcher(daemon, "ana")
        admin_watch = await watcher(daemon, "admin")
        wendy_watch = await watcher(daemon, "wendy")  # the worker role reads everything ...
        for name, client in (("bob", bob), ("alice", alice)):
            assert await user(client, KEYS[name][1]) == name

        del auth["api_keys"]["bob"]
        auth["roles"]["viewer"]["permissions"] = []  # ana keeps her key, loses jobs:read
        # ... until it may read only its own: the admin's experiment is no longer wendy's to watch
        auth["roles"]["worker"] = {
            "permissions": ["jobs:read", "jobs:update", "jobs:claim"],
            "read_scope": "own",
            "write_scope": "all",
        }
        closed = await reload_and_wait(daemon, config, raw, bob, ana_watch, wendy_watch)
        assert closed == [(1008, "key revoked")] * 3
        assert await user(alice, KEYS["alice"][1]) == "alice"
        logged = LogMetric(key_hash=hash_of("admin"), commit_id=COMMIT, step=1, value=1.0, name="x")
        assert isinstance(await admin.call(logged), Success)
        assert isinstance(await admin_watch.recv(), Data)  # still watching

        auth["require_handshake_key"] = True
        closed = await reload_and_wait(daemon, config, raw, admin_watch, admin)
        assert closed == [(1008, "handshake key required")] * 2
        with pytest.raises(InvalidStatus) as refused:
            await daemon.client()
        assert refused.value.response.status_code == 401
        assert await user(alice, KEYS["alice"][1]) == "alice"

        auth["ip_whitelist"] = ["10.0.0.0/8"]
        closed = await reload_and_wait(daemon, config, raw, alice)
        assert closed == [(1008, "address not allowed")]
        assert " connection open" not in daemon.log()  # per-connection lines are debug level
        await daemon.shutdown()
