"""The benchmark's baseline server: a bare websockets server, no protocol work.

It answers every binary message with the same 10-byte binary reply (a SUCCESS
with an empty message, as the daemon's LOG_METRIC ack), with the daemon's
transport settings: no compression, 1 MiB max message size, default pings.
Whatever the daemon costs beyond this is the daemon's own work.

    python scripts/bench_echo.py [--port 0]

Prints `listening on ws://127.0.0.1:PORT/ws` on stderr when ready; stops on SIGTERM.
"""

import argparse
import asyncio
import resource
import signal
import sys
import time

from websockets.asyncio.server import ServerConnection, serve

MAX_MESSAGE_BYTES = 1 << 20
REPLY = b"\x00" + int(time.time()).to_bytes(8, "big") + b"\x00"
"""SUCCESS, a timestamp, an empty message: 10 bytes."""


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def answer(ws: ServerConnection) -> None:
    async for _message in ws:
        await ws.send(REPLY)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(
        answer, "127.0.0.1", port, compression=None, max_size=MAX_MESSAGE_BYTES
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on ws://127.0.0.1:{port}/ws", file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    raise_open_file_limit()
    asyncio.run(main(parser.parse_args().port))
