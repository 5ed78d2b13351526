"""Client.log_metric packs its LOG_METRIC at once: the bytes a real server receives are
exactly `encode_request(LogMetric(...))`, and bad input is refused before sending."""

import math

import pytest
from websockets.asyncio.server import ServerConnection, serve

from fetchml.client import Client, InvalidRequest
from fetchml.protocol.keys import key_hash
from fetchml.protocol.requests import LogMetric, encode_request
from fetchml.protocol.responses import Success, encode_response

KEY = "fml_test_log_metric_bytes"
C = "0123456789abcdef0123456789abcdef01234567"


async def test_log_metric_sends_the_encoded_request() -> None:
    received: list[bytes] = []

    async def answer(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, bytes)
            received.append(message)
            await ws.send(encode_response(Success(timestamp=1, message="")))

    calls = [("loss", 0.25, 0), ("λ/acc", math.inf, 4_294_967_295), ("n" * 255, -0.0, 7)]
    async with serve(answer, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ws"
        async with Client.connect(url, api_key=KEY, handshake_key=False) as c:
            for name, value, step in calls:
                await c.log_metric(C, name, value, step=step)
            await c.log_metric(bytes.fromhex(C), "int", 3, step=1)  # an int value, raw commit
            for bad in (("", 1.0, 0), ("x" * 256, 1.0, 0), ("a\0b", 1.0, 0), ("ok", 1.0, -1)):
                with pytest.raises(InvalidRequest):
                    await c.log_metric(C, *bad[:2], step=bad[2])
            with pytest.raises(InvalidRequest):
                await c.log_metric("zz", "loss", 1.0)
    expected = [
        encode_request(
            LogMetric(key_hash=key_hash(KEY), commit_id=bytes.fromhex(C), step=s, value=v, name=n)
        )
        for n, v, s in [*calls, ("int", 3.0, 1)]
    ]
    assert received == expected
