"""Handshake keys (headers and subprotocol tokens), require_handshake_key, and the bad-key
throttle per address, against a real daemon."""

import asyncio
import logging
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.requests import WhoAmI
from tests.support.daemon import poll
from tests.support.http import Headers, handshake, http_get, samples, status
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import KEYS, UNKNOWN_KEY, hash_of, key_hash
from tests.support.wire import RawClient, closed_with, error_of, user

ALICE = KEYS["alice"][1]
BOB = KEYS["bob"][1]
WRONG = "fml_wrong_key_not_configured"


# -- keys in the handshake --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("X-API-Key", ALICE), ("X-API-Key", ALICE)], 101),
        (
            [
                ("X-API-Key", ALICE),
                ("Authorization", f"Bearer {ALICE}"),
                ("Sec-WebSocket-Protocol", f"fetchml, fetchml.key.{ALICE}"),
            ],
            101,
        ),
        ([("Authorization", "Basic dXNlcjpwdw==")], 101),  # not ours: no key
        ([("X-API-Key", ALICE), ("X-API-Key", BOB)], 401),
        ([("X-API-Key", ALICE), ("Authorization", f"Bearer {BOB}")], 401),
        ([("X-API-Key", ALICE), ("Sec-WebSocket-Protocol", f"fetchml.key.{BOB}")], 401),
        ([("X-API-Key", WRONG), ("X-API-Key", WRONG)], 401),
        ([("X-API-Key", "")], 400),
        ([("X-API-Key", "two words")], 400),
        ([("Authorization", "Bearer")], 400),
        ([("Authorization", "Bearer ")], 400),
        ([("Sec-WebSocket-Protocol", "fetchml.key.")], 400),
        ([("Sec-WebSocket-Protocol", "fetchml.key.a b")], 400),
    ],
    ids=[
        "same-key-twice",
        "same-key-three-ways",
        "basic-auth-ignored",
        "two-x-api-keys",
        "header-and-bearer-differ",
        "header-and-token-differ",
        "wrong-key-twice",
        "empty-x-api-key",
        "key-with-space",
        "bearer-without-token",
        "bearer-empty-token",
        "empty-token-key",
        "malformed-protocol-header",
    ],
)
async def test_every_key_in_a_handshake_must_be_the_same_valid_key(
    daemon: Daemon, headers: Headers, expected: int
) -> None:
    assert await status(daemon, headers) == expected


async def test_the_subprotocol_is_fetchml_when_offered_and_a_key_token_binds(
    daemon: Daemon,
) -> None:
    offered = [Subprotocol("fetchml"), Subprotocol(f"fetchml.key.{ALICE}")]
    async with connect(daemon.url, compression=None, subprotocols=offered) as ws:
        assert ws.subprotocol == "fetchml"
        assert ws.response is not None
        assert ws.response.headers.get_all("Sec-WebSocket-Protocol") == ["fetchml"]
        client = RawClient(ws)
        assert await user(client, ALICE) == "alice"
        error_of(
            await client.call(WhoAmI(key_hash=hash_of("bob"))), ErrorCode.AUTHENTICATION_FAILED
        )
    for offered in (
        [Subprotocol(f"fetchml.key.{ALICE}")],
        [Subprotocol("chat"), Subprotocol("mqtt")],
    ):
        _, headers = await handshake(daemon, [("Sec-WebSocket-Protocol", ", ".join(offered))])
        assert "sec-websocket-protocol" not in headers  # none selected, a key never echoed
        async with connect(daemon.url, compression=None, subprotocols=offered) as ws:
            assert ws.subprotocol is None
            assert await user(RawClient(ws), ALICE) == "alice"


async def test_require_handshake_key_refuses_an_upgrade_without_a_valid_raw_key(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(auth={"require_handshake_key": True})
    leaked_hash = key_hash(ALICE).hex()  # what a leaked config file gives away, and more
    for headers in ([], [("X-API-Key", WRONG)], [("X-API-Key", leaked_hash)]):
        assert await status(daemon, headers) == 401
    for headers in (
        [("X-API-Key", ALICE)],
        [("Authorization", f"Bearer {ALICE}")],
        [("Sec-WebSocket-Protocol", f"fetchml.key.{ALICE}")],
    ):
        assert await status(daemon, headers) == 101
    ws = await connect(daemon.url, compression=None, additional_headers={"X-API-Key": ALICE})
    assert await user(RawClient(ws), ALICE) == "alice"
    await ws.close()
    for path in ("/health", "/metrics"):
        assert (await http_get(daemon, path)).status == 200


# -- throttling -----------------------------------------------------------------------------


async def fail(client: RawClient, times: int) -> None:
    for _ in range(times):
        error_of(await client.call(WhoAmI(key_hash=UNKNOWN_KEY)), ErrorCode.AUTHENTICATION_FAILED)


async def test_ten_failures_close_the_connection_and_throttle_the_address_with_growing_backoff(
    daemon: Daemon,
) -> None:
    bound = await daemon.client(additional_headers={"X-API-Key": ALICE})
    await fail(bound, 30)  # a valid handshake key: answered, never counted or closed
    plain = await daemon.client()
    await fail(plain, 9)
    assert await user(plain, ALICE) == "alice"  # still open
    await fail(plain, 1)
    assert await closed_with(plain) == 1008
    assert plain.ws.close_reason == "too many authentication failures"

    code, headers = await handshake(daemon)
    assert (code, headers["retry-after"]) == (429, "1")
    assert await status(daemon, [("X-API-Key", WRONG)]) == 401  # counts as a failure
    assert await status(daemon, [("X-API-Key", BOB)]) == 101  # a valid key: never refused
    await fail(bound, 10)
    assert await user(bound, ALICE) == "alice"

    started = time.monotonic()
    while await status(daemon) == 429:
        await asyncio.sleep(0.05)
    waited = time.monotonic() - started
    print(f"\nthrottled for {waited * 1000:.0f} ms after the first 10 failures (backoff 1 s)")
    assert waited <= 10.0
    again = await daemon.client()
    await fail(again, 9)  # the 401 above was the first of these ten
    assert await closed_with(again) == 1008
    code, headers = await handshake(daemon)
    assert (code, headers["retry-after"]) == (429, "2")  # the backoff grew


async def test_pipelined_bad_keys_get_ten_answers_then_the_close(daemon: Daemon) -> None:
    plain = await daemon.client()
    for _ in range(500):  # all sent before the daemon answers the first
        await plain.send(WhoAmI(key_hash=UNKNOWN_KEY))
    answers = 0
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            error_of(await plain.recv(), ErrorCode.AUTHENTICATION_FAILED)
            answers += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert answers == 10


async def test_wrong_key_handshakes_count_towards_the_throttle(daemon: Daemon) -> None:
    for _ in range(10):
        assert await status(daemon, [("Authorization", f"Bearer {WRONG}")]) == 401
    assert await status(daemon) == 429
    assert await status(daemon, [("X-API-Key", WRONG)]) == 401  # still 401, never 429
    metrics = samples((await http_get(daemon, "/metrics")).body.decode())
    refused = {
        dict(labels)["status"]: value
        for (name, labels), value in metrics.items()
        if name == "fetchml_handshakes_refused_total"
    }
    assert refused == {"401": 11.0, "429": 1.0}


async def test_connection_lines_are_debug_level(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(3):
        client = await daemon.client()
        await user(client, ALICE)
        await client.ws.close()
    assert await status(daemon, [("X-API-Key", WRONG)]) == 401
    assert (await http_get(daemon, "/health")).status == 200
    server_side = [
        r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client")
    ]
    assert not [m for m in server_side if m.startswith(("connection ", "HTTP response"))]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="fetchml.server")
    client = await daemon.client()
    await client.ws.close()
    await poll(
        lambda: any(r.getMessage() == "connection closed" for r in caplog.records),
        "the debug line of a closed connection",
    )
    assert [r.levelno for r in caplog.records if r.getMessage() == "connection open"] == [
        logging.DEBUG
    ]
