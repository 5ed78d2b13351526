"""WATCH_METRICS fan-out: caught-up watchers of one filter share one push, built once;
watchers that are behind (backfilling, or with a full socket) still get exact streams."""

import asyncio
from socket import SO_RCVBUF, SO_SNDBUF, SOL_SOCKET

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, broadcast

from fetchml.protocol.metrics import metrics_packet
from fetchml.protocol.requests import LogMetrics, MetricPoint
from fetchml.protocol.responses import Success, decode_response
from fetchml.server import watch as watch_module
from tests.support.daemon import poll
from tests.support.experiments import metrics_path
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN
from tests.support.watch import (
    Stream,
    commit_of,
    create,
    on_disk,
    start_watch,
    subscribers,
    watch,
    write,
)
from tests.support.wire import RawClient

BIG = "n" * 200
"""221-byte records: a few MB fill a watcher's socket."""


def mixed(commit: bytes, start: int, count: int, other: str = "acc") -> LogMetrics:
    points = [
        MetricPoint(step, float(step), name)
        for step in range(start, start + count)
        for name in (other, "loss")
    ]
    return LogMetrics(key_hash=ADMIN, commit_id=commit, metrics=tuple(points))


async def test_caught_up_watchers_of_one_filter_get_one_push_built_once(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = commit_of(20)
    writer = await create(daemon, commit)
    await write(writer, mixed(commit, 0, 5))
    losses = [await start_watch(daemon, watch(commit, name="loss")) for _ in range(8)]
    everything = [await start_watch(daemon, watch(commit)) for _ in range(8)]
    streams = [Stream(0) for _ in losses + everything]
    for client, stream in zip(losses + everything, streams, strict=True):
        await stream.read_until(client, 10)  # the backfill
    subs = subscribers(daemon, commit)
    await poll(lambda: all(s.live for s in subs), "every watcher to be live")
    assert len(subs) == 16

    built = packets_built(monkeypatch)
    writes = 5
    for n in range(writes):
        await write(writer, mixed(commit, 5 + 3 * n, 3))
        pushes = [await asyncio.wait_for(c.ws.recv(), 30) for c in losses + everything]
        assert len(set(pushes[:8])) == 1 and len(set(pushes[8:])) == 1
        assert sorted(built[-2:]) == sorted([pushes[0], pushes[8]])
        for stream, push in zip(streams, pushes, strict=True):
            assert isinstance(push, bytes)
            stream.add(decode_response(push))
    assert len(built) == 2 * writes, "one packet per batch and filter, not one per watcher"

    records = on_disk(daemon, commit)
    for stream in streams[:8]:
        assert stream.records == [r for r in records if r.name == "loss"]
    for stream in streams[8:]:
        stream.check_contiguous()
        assert stream.records == records
    for client in [*losses, *everything, writer]:
        await client.ws.close()


async def test_a_nudge_racing_a_commit_keeps_caught_up_watchers_on_the_shared_push(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file poller's stat may see this daemon's own append and nudge the watchers just
    before that append's push: they stay live (the file holds nothing they lack), so the
    push is still the one shared packet, never a read of the file per watcher."""
    commit = commit_of(23)
    writer = await create(daemon, commit)
    await write(writer, mixed(commit, 0, 5))
    clients = [await start_watch(daemon, watch(commit)) for _ in range(8)]
    streams = [Stream(0) for _ in clients]
    for client, stream in zip(clients, streams, strict=True):
        await stream.read_until(client, 10)
    subs = subscribers(daemon, commit)
    await poll(lambda: all(s.caught_up for s in subs), "every watcher to be caught up")
    hub, ctx = daemon.app.hub, daemon.app.ctx
    assert ctx is not None
    ctx.store.hooks.insert(0, lambda hex_id, *_: hub.nudge(hex_id))
    built = packets_built(monkeypatch)
    writes = 5
    for n in range(writes):
        await write(writer, mixed(commit, 5 + 3 * n, 3))
        for client, stream in zip(clients, streams, strict=True):
            await stream.read_until(client, 16 + 6 * n)
    assert len(built) == writes, f"{len(built)} packets built for {writes} nudged batches"
    records = on_disk(daemon, commit)
    for stream in streams:
        stream.check_contiguous()
        assert stream.records == records
    for client in [*clients, writer]:
        await client.ws.close()


async def test_mixed_filters_lagging_and_blocked_watchers_get_exact_streams(
    start_daemon: DaemonFactory,
) -> None:
    daemon: Daemon = await start_daemon(server={"watch_buffer_bytes": 256 << 20})
    commit = commit_of(21)
    writer = await create(daemon, commit)
    await write(writer, mixed(commit, 0, 50, BIG))
    names: dict[RawClient, str] = {}
    streams: dict[RawClient, Stream] = {}
    readers: list[asyncio.Task[None]] = []

    async def follow(name: str, from_index: int) -> RawClient:
        client = await start_watch(daemon, watch(commit, from_index, name))
        names[client], streams[client] = name, Stream(from_index)
        readers.append(asyncio.create_task(streams[client].read_until(client, 1 << 62)))
        return client

    every = await follow("", 0)
    await follow("loss", 0)
    others = subscribers(daemon, commit)
    blocked = await start_watch(daemon, watch(commit, from_index=100))
    await poll(lambda: len(subscribers(daemon, commit)) == 3, "the blocked watcher's stream")
    (held,) = subscribers(daemon, commit) - others
    await poll(lambda: all(s.caught_up for s in subscribers(daemon, commit)), "caught up")

    # `blocked` reads nothing: its socket fills, its writes pause, batches queue for it,
    # while the others get each batch at once and one more starts from 0 meanwhile.
    step = 50
    while not held.batches:
        assert step < 200_000, "the blocked watcher's writes never paused"
        await write(writer, mixed(commit, step, 250, BIG))
        step += 250
        if step == 2050:
            await follow(BIG, 0)
    size = metrics_path(daemon.config.storage.base_path, commit).stat().st_size
    print(f"the blocked watcher's writes paused at {2 * step:,} records, {size / 1e6:.1f} MB")
    for _ in range(4):
        await write(writer, mixed(commit, step, 250, BIG))
        step += 250
    blocked_stream = Stream(100)
    await blocked_stream.read_until(blocked, 2 * step)
    await poll(lambda: held.caught_up, "the blocked watcher to be caught up again")
    await write(writer, mixed(commit, step, 10, BIG))  # pushed to it directly again
    step += 10
    await blocked_stream.read_until(blocked, 2 * step)

    records = on_disk(daemon, commit)
    assert len(records) == 2 * step
    await poll(lambda: all(s.next == 2 * step for s in streams.values()), "every stream")
    for reader in readers:
        reader.cancel()
    blocked_stream.check_contiguous()
    assert blocked_stream.records == records[100:]
    streams[every].check_contiguous()
    for client, stream in streams.items():
        assert stream.records == [r for r in records if names[client] in ("", r.name)]
    for client in [*streams, blocked, writer]:
        await client.ws.close()


async def test_a_watcher_with_a_full_socket_is_queued_the_shared_frame_in_order(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live watcher whose connection is above its high-water mark is queued the same
    push frame as the caught-up ones: with one batch queued it writes that frame (no
    packet built for it); what queues up behind is merged once it reads again, and its
    stream is exact."""
    commit = commit_of(24)
    writer = await create(daemon, commit)
    await write(writer, mixed(commit, 0, 5))
    reader = await start_watch(daemon, watch(commit))
    others = subscribers(daemon, commit)
    blocked = await start_watch(daemon, watch(commit))
    streams = {reader: Stream(0), blocked: Stream(0)}
    for client, stream in streams.items():
        await stream.read_until(client, 10)
    await poll(lambda: len(subscribers(daemon, commit)) == 2, "both streams")
    (held,) = subscribers(daemon, commit) - others
    await poll(lambda: all(s.caught_up for s in subscribers(daemon, commit)), "caught up")
    # Small socket buffers on both ends, and a watcher that stops reading: a few hundred
    # kilobytes fill them.
    assert held.ws is not None
    sockets = [held.ws.transport.get_extra_info("socket")]
    sockets.append(blocked.ws.transport.get_extra_info("socket"))
    sizes = [sockets[0].getsockopt(SOL_SOCKET, SO_SNDBUF)]
    sizes.append(sockets[1].getsockopt(SOL_SOCKET, SO_RCVBUF))
    sockets[0].setsockopt(SOL_SOCKET, SO_SNDBUF, 4096)
    sockets[1].setsockopt(SOL_SOCKET, SO_RCVBUF, 4096)
    blocked.ws.transport.pause_reading()
    following = asyncio.create_task(streams[reader].read_until(reader, 1 << 62))
    built = packets_built(monkeypatch)
    step = writes = 5
    while len(held.batches) < 3:
        assert step < 20_000, "the blocked watcher's pushes were never queued"
        await write(writer, mixed(commit, step, 100, BIG))
        step += 100
        writes += 1
    print(f"3 pushes queued after {2 * step:,} records")
    assert all(frame is not None for *_, frame in held.batches)
    assert len(built) == writes - 5, "one packet per batch, none for the blocked watcher"
    before = len(streams[blocked].packets)
    sockets[0].setsockopt(SOL_SOCKET, SO_SNDBUF, sizes[0])
    sockets[1].setsockopt(SOL_SOCKET, SO_RCVBUF, sizes[1])
    blocked.ws.transport.resume_reading()
    await streams[blocked].read_until(blocked, 2 * step)
    queued = len(streams[blocked].packets) - before
    assert queued < writes - 5, f"{queued} pushes for {writes - 5} batches: none merged"
    await poll(lambda: streams[reader].next == 2 * step, "the reader's stream")
    following.cancel()
    records = on_disk(daemon, commit)
    assert len(records) == 2 * step
    for stream in streams.values():
        stream.check_contiguous()
        assert stream.records == records
    for client in [reader, blocked, writer]:
        await client.ws.close()


async def test_a_compressed_watcher_gets_its_own_frame(
    start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """permessage-deflate frames differ per connection: websockets builds them."""
    daemon: Daemon = await start_daemon(server={"compression": True})
    commit = commit_of(22)
    writer = await create(daemon, commit)
    plain = await start_watch(daemon, watch(commit))
    deflate = RawClient(await connect(daemon.url, compression="deflate", max_size=None))
    assert isinstance(await deflate.call(watch(commit)), Success)
    await poll(lambda: len(subscribers(daemon, commit)) == 2, "both streams")
    await poll(lambda: all(s.caught_up for s in subscribers(daemon, commit)), "caught up")
    framed: list[int] = []
    real = broadcast

    def counting(connections: list[ServerConnection], packet: bytes) -> None:
        framed.extend(len(c.protocol.extensions) for c in connections)
        real(connections, packet)

    monkeypatch.setattr(watch_module, "broadcast", counting)
    streams = {plain: Stream(0), deflate: Stream(0)}
    for start in range(0, 30, 10):
        await write(writer, mixed(commit, start, 5))
        for client, stream in streams.items():
            await stream.read_until(client, start + 10)
    assert framed == [1, 1, 1]
    for stream in streams.values():
        stream.check_contiguous()
        assert stream.records == on_disk(daemon, commit)
    for client in [plain, deflate, writer]:
        await client.ws.close()


def packets_built(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every push packet the watch fan-out builds from now on."""
    built: list[bytes] = []
    real = metrics_packet

    def counting(timestamp: int, next_index: int, count: int, records: bytes) -> bytes:
        packet = real(timestamp, next_index, count, records)
        built.append(packet)
        return packet

    monkeypatch.setattr(watch_module, "metrics_packet", counting)
    return built
