"""WATCH_METRICS fan-out: backfill from disk, then each committed batch, in order.

A subscriber is *live* once it has caught up with the file. Live subscribers
of one name filter that have nothing queued and a writable connection are
*caught up*: the store's commit hook builds one DATA packet (and its frame)
per batch and filter and writes the same bytes to all of them at once,
without waking their tasks. Any other live subscriber (its socket is full,
or it still has pushes queued) gets the batch's records queued, shared per
filter, with that same frame; its own task writes the frame as it is when it
is the only batch queued (a socket full for a moment costs no packet of its
own), or merges what is queued into one packet (a watcher that lags gets
fewer, larger pushes), so a watcher whose socket is full never holds up
ingest or the others. Queued bytes beyond the buffer limit make it a slow
subscriber, which the connection closes with 1008. (With permessage-deflate
a connection needs frames of its own: its batches are always merged.)
"""

import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import pairwise

import anyio
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from fetchml.protocol.metrics import RECORD_MIN, metrics_packet, walk

from .errors import NotFound
from .storage import ExperimentStore

PAGE_BYTES = 256 << 10
MERGE_BYTES = 1 << 20
"""Queued batches merge into one push packet up to this size."""


class SlowSubscriber(Exception):
    """Queued push packets outgrew watch_buffer_bytes."""


def filter_records(data: bytes, total: int, name: bytes | None, skip: int = 0) -> tuple[bytes, int]:
    """The records of `data` (`total` of them) after the first `skip` named `name` (None: all)."""
    if name is None and not skip:
        return data, total
    starts: list[int] = []
    starts.append(walk(data, starts))
    kept = [
        data[start:end]
        for start, end in pairwise(starts[skip:])
        if name is None or data[start + RECORD_MIN : end] == name
    ]
    return b"".join(kept), len(kept)


class Subscriber:
    def __init__(self, commit: str, from_index: int, name: str, limit: int) -> None:
        self.commit = commit
        self.next = from_index
        self.name = name.encode() if name else None
        self.limit = limit
        self.live = False
        self.overflow = False
        self.gone = False
        """The experiment was pruned: the stream ends."""
        self.recheck = False
        """Another process may have appended: compare the file's count with `next`."""
        self.batches: deque[tuple[bytes, int, int, bytes | None]] = deque()
        """Committed records not yet sent: (records, count, index just past the batch,
        the push frame of exactly these records shared with other watchers, if any)."""
        self.queued = 0
        self.ws: ServerConnection | None = None
        """The watcher's connection, once its stream runs: caught up, it is pushed to
        directly."""
        self._wakeup: anyio.Event | None = None
        """Set by the next wake(); a fresh one for each wait, never cleared."""

    @property
    def caught_up(self) -> bool:
        """Live with nothing queued, on a connection whose write buffer is within its
        high-water mark (where websockets' own sends would wait): a push may be written
        to it now."""
        if not self.live or self.batches or self.ws is None:
            return False
        transport = self.ws.transport
        return transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def push(self, records: bytes, count: int, next_index: int, frame: bytes | None = None) -> None:
        """Queue a batch's records (and the push frame of them shared with others)."""
        if self.batches and self.queued + len(records) > self.limit:
            self.overflow = True
        else:
            self.batches.append((records, count, next_index, frame))
            self.queued += len(records)
            self.next = next_index
        self.wake()

    def _take(self) -> bytes:
        """One packet of the queued batches: merged, so a watcher that lags a little
        costs one send per wakeup, not one per flush."""
        parts: list[bytes] = []
        count = size = next_index = 0
        while self.batches and (not parts or size + len(self.batches[0][0]) <= MERGE_BYTES):
            records, n, next_index, _ = self.batches.popleft()
            parts.append(records)
            count += n
            size += len(records)
        self.queued -= size
        return metrics_packet(int(time.time()), next_index, count, b"".join(parts))

    async def run(self, store: ExperimentStore, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send until cancelled; raises SlowSubscriber when the buffer overflows."""
        while True:
            while self.batches:
                if len(self.batches) == 1 and self.batches[0][3] is not None:
                    await self._write_frame()
                else:
                    await send(self._take())
            if self.overflow:
                raise SlowSubscriber
            if self.gone:
                raise NotFound(f"experiment {self.commit} was pruned")
            if self.recheck and self.live:
                self.recheck = False
                if self.next < await store.count(self.commit):
                    self.live = False  # records of another process: read them from the file
                continue
            if not self.live:
                self.recheck = False
                if self.next < await store.count(self.commit):
                    await self._backfill(store, send)
                    continue
                self.live = True
            if not self.batches:
                wakeup = self._wakeup = anyio.Event()
                await wakeup.wait()

    async def _write_frame(self) -> None:
        """The one batch queued, as the frame shared with other watchers: written as it
        is, then wait until the connection's write buffer is below its low-water mark."""
        records, _, _, frame = self.batches.popleft()
        assert frame is not None
        self.queued -= len(records)
        ws = self.ws
        assert ws is not None
        if ws.protocol.state is State.OPEN:  # else it is closing: the stream ends
            ws.transport.write(frame)
            with contextlib.suppress(OSError):  # lost: the connection's reader ends it
                await ws.drain()

    async def _backfill(
        self, store: ExperimentStore, send: Callable[[bytes], Awaitable[None]]
    ) -> None:
        chunk = await store.read(self.commit, self.next, PAGE_BYTES)
        records, count = filter_records(chunk.data, chunk.records, self.name)
        next_index = chunk.start + chunk.records
        if count:
            await send(metrics_packet(int(time.time()), next_index, count, records))
        self.next = next_index


class WatchHub:
    """Subscribers per experiment; `on_commit` is the store's commit hook."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscriber]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def add(self, sub: Subscriber) -> None:
        self._subs.setdefault(sub.commit, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.commit)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.commit]

    def watched(self) -> list[str]:
        """The experiments with watchers."""
        return list(self._subs)

    def nudge(self, commit: str) -> None:
        """Another process may have appended to the experiment (cluster fan-out, or the
        file grew): each watcher compares the file's count with its own and reads what is
        new from the file, in order, as a late watcher does. One with nothing new stays
        live, so a nudge of this process's own appends (a stat racing a flush) costs a
        count, never a detour through the file while ingest runs."""
        for sub in self._subs.get(commit, ()):
            sub.recheck = True
            sub.wake()

    def end(self, commit: str) -> None:
        """The experiment is gone (pruned): its watchers are closed, never fed a successor."""
        for sub in self._subs.pop(commit, ()):
            sub.gone = True
            sub.wake()

    def on_commit(self, commit: str, first: int, data: bytes, count: int) -> None:
        subs = self._subs.get(commit)
        if not subs:
            return
        end = first + count
        shared: dict[bytes | None, tuple[bytes, int]] = {}
        built: dict[bytes | None, tuple[bytes, bytes]] = {}
        direct: dict[bytes | None, list[ServerConnection]] = {}

        def push_of(name: bytes | None) -> tuple[bytes, bytes]:
            """The push packet of filter `name` and its frame, built once."""
            if name not in built:
                records, kept = shared[name]
                packet = metrics_packet(int(time.time()), end, kept, records)
                built[name] = packet, frame_of(packet)
            return built[name]

        for sub in subs:
            if not sub.live or first > sub.next:
                sub.live = False  # behind, or a gap (another writer): read from disk
                sub.wake()
                continue
            if end <= sub.next:
                continue
            if first < sub.next:
                records, kept = filter_records(data, count, sub.name, sub.next - first)
            else:
                if sub.name not in shared:
                    shared[sub.name] = filter_records(data, count, sub.name)
                records, kept = shared[sub.name]
                if kept and sub.caught_up:
                    assert sub.ws is not None
                    direct.setdefault(sub.name, []).append(sub.ws)
                    sub.next = end
                    continue
                if kept and sub.ws is not None and not sub.ws.protocol.extensions:
                    sub.push(records, kept, end, push_of(sub.name)[1])
                    continue
            if kept:
                sub.push(records, kept, end)
            else:
                sub.next = end
        for name, connections in direct.items():
            write_to_all(connections, *push_of(name))


def frame_of(packet: bytes) -> bytes:
    """`packet` as one unmasked binary frame, as a server sends it."""
    return Frame(Opcode.BINARY, packet).serialize(mask=False)


def write_to_all(connections: list[ServerConnection], packet: bytes, frame: bytes) -> None:
    """`packet` (serialized as `frame`) on each open connection, written now, never awaited.

    The frame is serialized once and the same bytes go to every connection without an
    extension: websockets' broadcast() would build (copy) it once per connection. A
    connection with permessage-deflate needs a frame of its own: broadcast() makes it.
    """
    for ws in connections:
        if ws.protocol.state is State.OPEN and not ws.protocol.extensions:
            ws.transport.write(frame)
        else:
            broadcast([ws], packet)  # skips a connection that is closing
