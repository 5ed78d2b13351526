"""Keepalive: a connection silent for ping_interval_s is pinged and closed 1011 when no Pong
comes within ping_timeout_s; a connection that keeps sending requests is never pinged (so
idle workers' claims cost the daemon no pings)."""

import asyncio

from fetchml.protocol.requests import WhoAmI
from tests.support.inproc import DaemonFactory
from tests.support.keys import ALICE_KEY as ALICE
from tests.support.keys import key_hash
from tests.support.wire import closed_with, user

INTERVAL_S = 0.2


async def test_a_silent_peer_that_does_not_answer_pings_is_closed_1011(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(
        server={"ping_interval_s": INTERVAL_S, "ping_timeout_s": INTERVAL_S}
    )
    mute = await daemon.client(ping_interval=None)
    answering = await daemon.client(ping_interval=None)
    assert await user(mute, ALICE) == "alice"
    assert await user(answering, ALICE) == "alice"
    mute.ws.transport.pause_reading()  # it reads no Ping, so it sends no Pong
    await asyncio.sleep(5 * INTERVAL_S)  # silent 0.2 s, pinged, no Pong 0.2 s later: closed
    mute.ws.transport.resume_reading()
    assert await asyncio.wait_for(closed_with(mute), 10) == 1011
    assert mute.ws.close_reason == "keepalive ping timeout"
    assert await user(answering, ALICE) == "alice"  # it answered its pings all along


async def test_a_peer_sending_requests_is_not_pinged(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(
        server={"ping_interval_s": INTERVAL_S, "ping_timeout_s": INTERVAL_S}
    )
    busy = await daemon.client(ping_interval=None)
    busy.ws.transport.pause_reading()  # a Ping would go unanswered and close it
    sent = 0
    for _ in range(20):  # 2 s: ten intervals, and every Pong would be late
        await busy.send(WhoAmI(key_hash=key_hash(ALICE)))
        sent += 1
        await asyncio.sleep(INTERVAL_S / 2)
    busy.ws.transport.resume_reading()
    for _ in range(sent):
        await busy.recv()
    assert await user(busy, ALICE) == "alice"
