"""One request at a time: the client waits for each answer before it sends the next.

Four clients, each in its own process so the benchmark's own event loop is not shared:

    python scripts/bench_onecall.py client URL --key KEY --commit HEX --calls N
        awaits `Client.log_metric(...)` N times against the daemon at URL
    python scripts/bench_onecall.py bare URL --calls N
        a bare websockets asyncio client: send() then recv() N times, each message the
        size of the client's LOG_METRIC, against scripts/bench_echo.py at URL
    python scripts/bench_onecall.py sync URL --key KEY --commit HEX --calls N
        calls the blocking `SyncClient.log_metric(...)` N times against the daemon
    python scripts/bench_onecall.py bare-sync URL --calls N
        a websockets sync client's send() then recv() of the same message, against the echo

Prints one JSON line: {"calls": N, "seconds": S, "calls_per_second": R}. The first
`WARMUP` calls are not timed.
"""

import argparse
import asyncio
import json
import time

from websockets.asyncio.client import connect
from websockets.sync.client import connect as connect_sync

from fetchml.client import Client, SyncClient
from fetchml.protocol.keys import key_hash
from fetchml.protocol.requests import LogMetric, encode_request

WARMUP = 200
NAME = "loss"


def same_size_message(key: str, commit: str) -> bytes:
    """A LOG_METRIC as the client sends it: the bare client sends these bytes."""
    commit_id = bytes.fromhex(commit)
    return encode_request(
        LogMetric(key_hash=key_hash(key), commit_id=commit_id, step=1, value=0.5, name=NAME)
    )


async def client(url: str, key: str, commit: str, calls: int) -> float:
    async with Client.connect(url, api_key=key) as c:
        for step in range(WARMUP):
            await c.log_metric(commit, NAME, 0.5, step=step)
        started = time.perf_counter()
        for step in range(calls):
            await c.log_metric(commit, NAME, 0.5, step=step)
        return time.perf_counter() - started


async def bare(url: str, key: str, commit: str, calls: int) -> float:
    message = same_size_message(key, commit)
    async with connect(url, compression=None, max_size=None) as ws:
        for _ in range(WARMUP):
            await ws.send(message)
            await ws.recv()
        started = time.perf_counter()
        for _ in range(calls):
            await ws.send(message)
            await ws.recv()
        return time.perf_counter() - started


def blocking(url: str, key: str, commit: str, calls: int) -> float:
    with SyncClient.connect(url, api_key=key) as c:
        for step in range(WARMUP):
            c.log_metric(commit, NAME, 0.5, step=step)
        started = time.perf_counter()
        for step in range(calls):
            c.log_metric(commit, NAME, 0.5, step=step)
        return time.perf_counter() - started


def bare_blocking(url: str, key: str, commit: str, calls: int) -> float:
    message = same_size_message(key, commit)
    with connect_sync(url, compression=None, max_size=None) as ws:
        for _ in range(WARMUP):
            ws.send(message)
            ws.recv()
        started = time.perf_counter()
        for _ in range(calls):
            ws.send(message)
            ws.recv()
        return time.perf_counter() - started


MODES = {
    "client": lambda *args: asyncio.run(client(*args)),
    "bare": lambda *args: asyncio.run(bare(*args)),
    "sync": blocking,
    "bare-sync": bare_blocking,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=tuple(MODES))
    parser.add_argument("url")
    parser.add_argument("--key", default="")
    parser.add_argument("--commit", default="ab" * 20)
    parser.add_argument("--calls", type=int, default=2_000)
    args = parser.parse_args()
    seconds = MODES[args.mode](args.url, args.key, args.commit, args.calls)
    rate = args.calls / seconds
    print(json.dumps({"calls": args.calls, "seconds": seconds, "calls_per_second": rate}))


if __name__ == "__main__":
    main()
