"""Connections without a valid key: the authentication timeout, the per-address cap, and
room made for a client with a key when they fill the server."""

import asyncio
import time

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.requests import WhoAmI
from tests.support.http import status
from tests.support.inproc import DaemonFactory
from tests.support.keys import KEYS, UNKNOWN_KEY
from tests.support.wire import closed_with, error_of, user

ALICE = KEYS["alice"][1]
AUTH_TIMEOUT_S = 0.3


async def test_a_connection_without_a_valid_key_is_closed_after_auth_timeout(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(server={"auth_timeout_s": AUTH_TIMEOUT_S})
    started = time.monotonic()
    silent = await daemon.client()
    failing = await daemon.client()
    error_of(await failing.call(WhoAmI(key_hash=UNKNOWN_KEY)), ErrorCode.AUTHENTICATION_FAILED)
    verified = await daemon.client()
    assert await user(verified, ALICE) == "alice"
    bound = await daemon.client(additional_headers={"X-API-Key": ALICE})

    for client in (silent, failing):
        assert await asyncio.wait_for(closed_with(client), 30) == 1008
        assert client.ws.close_reason == "authentication timeout"
    took = time.monotonic() - started
    print(f"\nclosed after {took * 1000:.0f} ms without a valid key (auth_timeout_s 0.3)")
    assert AUTH_TIMEOUT_S <= took <= 10 * AUTH_TIMEOUT_S
    await asyncio.sleep(max(0.0, started + 3 * AUTH_TIMEOUT_S - time.monotonic()))
    assert await user(verified, ALICE) == "alice"  # a valid key was shown: no timeout
    assert await user(bound, ALICE) == "alice"


async def test_max_connections_per_ip_counts_connections_without_a_valid_key(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(server={"max_connections_per_ip": 3})
    clients = [await daemon.client() for _ in range(3)]
    await user(clients[0], ALICE)  # no longer counts
    clients.append(await daemon.client())
    assert await status(daemon) == 429
    assert await status(daemon, [("X-API-Key", ALICE)]) == 101  # a valid key: not capped
    with_key = await daemon.client(additional_headers={"X-API-Key": ALICE})
    assert await user(with_key, ALICE) == "alice"
    await clients[1].ws.close()
    await clients[1].ws.wait_closed()
    for _ in range(100):  # the daemon sees the close a moment later
        if await status(daemon) != 429:
            break
        await asyncio.sleep(0.01)
    assert await status(daemon) == 101


async def test_a_valid_key_gets_a_slot_closing_the_oldest_connection_without_one(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(server={"max_connections": 3})
    unverified = [await daemon.client() for _ in range(3)]
    assert await status(daemon) == 503
    keyed = await daemon.client(additional_headers={"X-API-Key": ALICE})
    assert await user(keyed, ALICE) == "alice"
    assert await asyncio.wait_for(closed_with(unverified[0]), 30) == 1008
    assert unverified[0].ws.close_reason == "too many connections"
    for client in unverified[1:]:
        assert await user(client, ALICE) == "alice"  # the newer ones stay
