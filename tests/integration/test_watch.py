"""WATCH_METRICS on a real in-process daemon (PROTOCOL.md section 3, WATCH_METRICS row).

SUCCESS, then DATA `metrics` pushes: the backfill from `from_index` in pages, then
each committed batch. An unfiltered watcher can check every packet exactly:
`next - previous next == count`, so no record is skipped or repeated.
"""

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.metrics import decode_metrics_payload
from fetchml.protocol.requests import (
    LogMetric,
    LogMetrics,
    MetricPoint,
    QueryMetrics,
    WatchMetrics,
    WhoAmI,
)
from fetchml.protocol.responses import Data, Error, Success
from tests.support.daemon import poll
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, hash_of
from tests.support.watch import (
    Stream,
    batch,
    commit_of,
    create,
    on_disk,
    recv,
    start_watch,
    subscribers,
    watch,
    write,
)
from tests.support.wire import RawClient


async def test_backfill_pages_then_live_batches(daemon: Daemon) -> None:
    commit = commit_of(1)
    writer = await create(daemon, commit)
    for start in range(0, 20_000, 5000):  # 500 KB: more than one 256 KiB backfill page
        await write(writer, batch(commit, start, 5000))

    watcher = await start_watch(daemon, watch(commit))
    stream = Stream(0)
    await stream.read_until(watcher, 20_000)
    assert len(stream.packets) >= 2, "the backfill came in one packet"
    assert stream.next == 20_000
    backfilled = len(stream.packets)

    for start in range(20_000, 20_300, 100):
        await write(writer, batch(commit, start, 100))
        await stream.read_until(watcher, start + 100)

    stream.check_contiguous()
    assert stream.next == 20_300
    assert [r.step for r in stream.records] == list(range(20_300))
    assert stream.records == on_disk(daemon, commit)
    assert [n for n, _ in stream.packets[backfilled:]] == list(range(20_100, 20_301, 100))
    await watcher.ws.close()
    await writer.ws.close()


async def test_watch_pipelined_behind_logs_comes_after_their_answers(daemon: Daemon) -> None:
    commit = commit_of(11)
    writer = await create(daemon, commit)
    client = await daemon.client()
    for step in range(3):
        await client.send(
            LogMetric(key_hash=ADMIN, commit_id=commit, step=step, value=1.0, name="loss")
        )
    await client.send(watch(commit, from_index=1))

    answers = [await recv(client) for _ in range(4)]  # three LOG_METRIC, then the WATCH
    assert all(isinstance(r, Success) and r.message == "" for r in answers), answers
    stream = Stream(1)
    await stream.read_until(client, 3)
    assert [(n, [r.step for r in records]) for n, records in stream.packets] == [(3, [1, 2])]
    await client.ws.close()
    await writer.ws.close()


async def test_name_filter(daemon: Daemon) -> None:
    commit = commit_of(2)
    writer = await create(daemon, commit)

    def mixed(start: int, count: int) -> LogMetrics:
        points = [
            MetricPoint(step, float(step), name)
            for step in range(start, start + count)
            for name in ("acc", "loss")
        ]
        return LogMetrics(key_hash=ADMIN, commit_id=commit, metrics=tuple(points))

    await write(writer, mixed(0, 50))
    watcher = await start_watch(daemon, watch(commit, name="loss"))
    stream = Stream(0)
    await stream.read_until(watcher, 100)
    await write(writer, mixed(50, 10))
    await write(writer, batch(commit, 60, 5, "acc"))  # nothing for this watcher
    await write(writer, mixed(65, 10))
    await stream.read_until(watcher, 145)

    assert stream.next == 145
    assert {r.name for r in stream.records} == {"loss"}
    assert [r.step for r in stream.records] == [*range(60), *range(65, 75)]
    assert stream.records == [r for r in on_disk(daemon, commit) if r.name == "loss"]
    await watcher.ws.close()
    await writer.ws.close()


async def test_from_index_past_the_end_waits(daemon: Daemon) -> None:
    commit = commit_of(3)
    writer = await create(daemon, commit)
    await write(writer, batch(commit, 0, 10))
    watcher = await start_watch(daemon, watch(commit, from_index=15))

    await write(writer, batch(commit, 10, 3))  # indices 10..12: still before from_index
    await write(writer, batch(commit, 13, 5))  # indices 13..17
    stream = Stream(15)
    await stream.read_until(watcher, 18)

    assert [(n, [r.step for r in records]) for n, records in stream.packets] == [(18, [15, 16, 17])]
    await watcher.ws.close()
    await writer.ws.close()


@pytest.mark.parametrize("from_index", [0, 7, 1234])
async def test_every_record_once_in_order_during_live_appends(
    daemon: Daemon, from_index: int
) -> None:
    commit = commit_of(4)
    writer = await create(daemon, commit)
    await write(writer, batch(commit, 0, 500))
    second = await daemon.client()
    watcher = await start_watch(daemon, watch(commit, from_index=from_index))
    stream = Stream(from_index)

    async def append(client: RawClient, name: str) -> int:
        written = 0
        for i in range(150):
            if i % 3:
                await write(client, batch(commit, written, 1 + i % 17, name))
                written += 1 + i % 17
            else:
                await write(
                    client,
                    LogMetric(key_hash=ADMIN, commit_id=commit, step=written, value=0.0, name=name),
                )
                written += 1
        return written

    reader = asyncio.create_task(stream.read_until(watcher, 1 << 62))
    counts = await asyncio.gather(append(writer, "a"), append(second, "b"))
    total = 500 + sum(counts)
    await poll(lambda: stream.next >= total or reader.done(), "the watcher to catch up")
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader

    stream.check_contiguous()
    assert stream.next == total
    assert all(n >= from_index for n, _ in stream.packets)
    assert stream.records == on_disk(daemon, commit)[from_index:]
    for name, count in zip("ab", counts, strict=True):
        steps = [r.step for r in stream.records if r.name == name]
        assert steps == list(range(count - len(steps), count))
    for client in (watcher, writer, second):
        await client.ws.close()


async def test_next_never_below_from_index(daemon: Daemon) -> None:
    commit = commit_of(5)
    writer = await create(daemon, commit)
    await write(writer, batch(commit, 0, 40, "other"))
    await write(writer, batch(commit, 40, 10))
    cases = [(0, "loss"), (20, ""), (45, "loss"), (60, ""), (60, "loss")]
    watchers = [(await start_watch(daemon, watch(commit, f, n)), f, n) for f, n in cases]

    for start in (50, 56, 62, 68):  # interleave names; the last write is a "loss" one
        await write(writer, batch(commit, start, 1, "other"))
        await write(writer, batch(commit, start + 1, 5))
    end = 50 + 4 * 6
    for client, from_index, name in watchers:
        stream = Stream(from_index)
        await stream.read_until(client, end)
        assert all(n >= from_index for n, _ in stream.packets), (from_index, name)
        expected = [r for r in on_disk(daemon, commit)[from_index:] if name in ("", r.name)]
        assert stream.records == expected, (from_index, name)
        assert stream.next == end
        await client.ws.close()
    await writer.ws.close()


async def test_message_after_watch_closes_1008(daemon: Daemon) -> None:
    commit = commit_of(6)
    writer = await create(daemon, commit)
    watcher = await start_watch(daemon, watch(commit))

    await watcher.send(WhoAmI(key_hash=ADMIN))
    with pytest.raises(ConnectionClosed) as closed:
        await recv(watcher)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008

    # Pipelined right behind the WATCH, before its SUCCESS arrived: same rule.
    eager = await daemon.client()
    await eager.send(watch(commit))
    await eager.send(WhoAmI(key_hash=ADMIN))
    first = await recv(eager)
    assert isinstance(first, Success)
    with pytest.raises(ConnectionClosed) as closed:
        await recv(eager)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    await writer.ws.close()


async def test_refused_watch_leaves_connection_usable(daemon: Daemon) -> None:
    commit, missing = commit_of(7), commit_of(8)
    writer = await create(daemon, commit)
    client = await daemon.client()

    refused = await client.call(watch(missing))
    assert isinstance(refused, Error) and refused.code == ErrorCode.RESOURCE_NOT_FOUND
    denied = await client.call(
        WatchMetrics(key_hash=hash_of("bob"), commit_id=commit, from_index=0, name="")
    )
    assert isinstance(denied, Error) and denied.code == ErrorCode.PERMISSION_DENIED

    assert isinstance(await client.call(WhoAmI(key_hash=ADMIN)), Data)
    await write(client, batch(commit, 0, 3))
    queried = await client.call(QueryMetrics(key_hash=ADMIN, commit_id=commit))
    assert isinstance(queried, Data)
    assert decode_metrics_payload(queried.payload).records == on_disk(daemon, commit)
    # And it can still become a watcher.
    assert isinstance(await client.call(watch(commit)), Success)
    stream = Stream(0)
    await stream.read_until(client, 3)
    assert stream.records == on_disk(daemon, commit)
    await client.ws.close()
    await writer.ws.close()


async def test_hundred_watchers_all_receive_everything(daemon: Daemon) -> None:
    commit = commit_of(9)
    writer = await create(daemon, commit)
    await write(writer, batch(commit, 0, 100))
    watchers = [await start_watch(daemon, watch(commit)) for _ in range(100)]
    streams = [Stream(0) for _ in watchers]
    total = 100 + 60 * 25
    readers = [
        asyncio.create_task(s.read_until(w, total)) for s, w in zip(streams, watchers, strict=True)
    ]

    for start in range(100, total, 25):
        await write(writer, batch(commit, start, 25))
    await asyncio.gather(*readers)

    expected = on_disk(daemon, commit)
    assert len(expected) == total
    for stream in streams:
        stream.check_contiguous()
        assert stream.records == expected
    for client in [*watchers, writer]:
        await client.ws.close()


async def test_slow_subscriber_closed_1008_then_resumes_without_gap(
    start_daemon: DaemonFactory,
) -> None:
    daemon: Daemon = await start_daemon(server={"watch_buffer_bytes": 4096})
    commit = commit_of(10)
    writer = await create(daemon, commit)
    name = "n" * 200  # 221-byte records: 12 per request make a ~2.7 KB push packet
    await write(writer, batch(commit, 0, 12, name))
    watcher = await start_watch(daemon, watch(commit))
    stream = Stream(0)
    await stream.read_until(watcher, 12)
    (sub,) = subscribers(daemon, commit)

    stop = asyncio.Event()
    written = 12

    async def keep_writing() -> None:
        nonlocal written
        while not stop.is_set():
            await write(writer, batch(commit, written, 12, name))
            written += 12

    writing = asyncio.create_task(keep_writing())
    try:
        # The watcher reads nothing now: the socket fills, push packets pile up.
        await poll(lambda: sub.overflow or writing.done(), "the watcher's buffer to overflow")
        assert not writing.done()
        # Resume reading while the writer goes on: what arrives must still be gap-free.
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                stream.add(await recv(watcher))
    finally:
        stop.set()
        await writing
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "subscriber too slow")
    stream.check_contiguous()

    resumed = await start_watch(daemon, watch(commit, from_index=stream.next))
    rest = Stream(stream.next)
    await rest.read_until(resumed, written)
    rest.check_contiguous()
    assert stream.records + rest.records == on_disk(daemon, commit)
    assert [r.step for r in stream.records + rest.records] == list(range(written))
    await resumed.ws.close()
    await writer.ws.close()
