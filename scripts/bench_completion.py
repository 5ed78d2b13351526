"""What one append's completion handle costs on the event loop: an asyncio future
(what the group commit hands each LOG request) against an anyio Event, each created,
set from a later loop callback and awaited, as the group commit and the connection's
writer do for every LOG_METRIC message. Median of 7 alternating rounds.

    python scripts/bench_completion.py [--rounds 7] [--n 20000]
"""

import argparse
import asyncio
import statistics
import time

import anyio


async def future_cycle(n: int) -> float:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(n):
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 1)
        await future
    return (time.perf_counter() - start) / n * 1e6


async def event_cycle(n: int) -> float:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(n):
        event = anyio.Event()
        loop.call_soon(event.set)
        await event.wait()
    return (time.perf_counter() - start) / n * 1e6


async def main(rounds: int, n: int) -> None:
    futures, events = [], []
    for _ in range(rounds):
        futures.append(await future_cycle(n))
        events.append(await event_cycle(n))
    fut, ev = statistics.median(futures), statistics.median(events)
    print(f"asyncio future create/set/await: {fut:.2f} us (median of {rounds})")
    print(f"anyio Event create/set/wait:     {ev:.2f} us (median of {rounds})")
    print(f"anyio costs {ev - fut:+.2f} us per append")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.n))
