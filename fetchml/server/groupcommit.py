"""Group commit: appends never write one request at a time.

`submit()` queues a request's encoded records on its experiment's queue and returns a
future. Once the requests read together are queued (a callback the event loop runs after
the reader yields), everything queued is written with a single write (at most
MAX_FLUSH_BYTES), every waiter is resolved with its first record's index, then the hooks
are called. A write the `write_now` step can make on the event loop (a small one to the
page cache) is made in that callback; one it declines, and every write when there is no
`write_now` (fsync), goes to a flusher task, one per experiment, whose write step decides
where the bytes are written. Starting a task costs more than such a write: for one
request at a time, the callback keeps the ack a task switch closer. Event loop only.

The completion handle is an asyncio future, the one place the server is asyncio-native
rather than anyio: every LOG request gets one, and `scripts/bench_completion.py` measures
an anyio Event in its place at about 6 us more per append (10.6 against 16.7 us,
median of 7), some 14-20% of a LOG_METRIC's whole cost in the daemon (31-45 us a
message in `scripts/bench`'s single-metric figure), far past the 3% it may cost.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

import anyio.abc

logger = logging.getLogger(__name__)

MAX_FLUSH_BYTES = 8 << 20
"""A flush never writes more; so a crash tears at most this much."""

CommitHook = Callable[[str, int, bytes, int], None]
"""Called after each flush with (commit hex, index of the first record, bytes, record count)."""
FlushHook = Callable[[int, float], None]
"""Called with (records, seconds) after each flush; for metrics."""


class Pending(NamedTuple):
    data: bytes
    records: int
    future: "asyncio.Future[int]"


@dataclass(eq=False)
class Queue:
    pending: list[Pending] = field(default_factory=list)
    writing: list[Pending] = field(default_factory=list)
    """The batch of the flush in progress."""
    flushing: bool = False
    scheduled: asyncio.Handle | None = None
    """The event loop callback that will write what is pending, until it runs."""

    @property
    def busy(self) -> bool:
        return self.flushing or bool(self.pending)


class Queued(Protocol):
    commit: str

    @property
    def queue(self) -> Queue: ...


E = TypeVar("E", bound=Queued)


class GroupCommit(Generic[E]):
    def __init__(
        self,
        tg: anyio.abc.TaskGroup,
        write: Callable[[E, bytes, int], Awaitable[int]],
        write_now: Callable[[E, bytes, int], int | None] | None,
        idle: Callable[[], None],
        hooks: list[CommitHook],
        flush_hooks: list[FlushHook],
    ) -> None:
        self._tg = tg
        self._loop = asyncio.get_running_loop()
        """Looked up once: Python 3.11 asks the kernel for the process ID on each lookup."""
        self._write = write
        """Writes whole records, returns the first one's index (or raises)."""
        self._write_now = write_now
        """The same without awaiting, or None (nothing written) when it has to wait; None
        when no write can be made on the event loop (fsync)."""
        self._idle = idle
        """Called when a flusher ends."""
        self.hooks = hooks
        self.flush_hooks = flush_hooks
        self._active: set[E] = set()
        self._handing: set[asyncio.Task[None]] = set()
        self._scheduled: set[E] = set()
        """Items whose pending writes wait for their callback (`flush_scheduled`)."""
        self.defer = False
        """While set, a submit schedules no callback: its caller runs `flush_scheduled` (or
        `schedule`) before it returns to the event loop. A callback cancelled unrun still
        costs the loop a turn: one epoll_wait more for every request taken in alone."""

    def submit(self, item: E, data: bytes, count: int) -> "asyncio.Future[int]":
        future: asyncio.Future[int] = self._loop.create_future()
        queue = item.queue
        queue.pending.append(Pending(data, count, future))
        if not queue.flushing:
            queue.flushing = True
            self._active.add(item)
            if self._write_now is None:
                self._tg.start_soon(self._flush_loop, item)
            else:
                self._scheduled.add(item)
                if not self.defer:
                    queue.scheduled = self._loop.call_soon(self._flush_now, item)
        return future

    def schedule(self) -> None:
        """Have the event loop's next turn make the writes left for `flush_scheduled`."""
        for item in self._scheduled:
            if item.queue.scheduled is None:
                item.queue.scheduled = self._loop.call_soon(self._flush_now, item)

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        futures = [
            p.future for item in self._active for p in (*item.queue.writing, *item.queue.pending)
        ]
        for future in futures:
            with contextlib.suppress(Exception):
                await future

    def flush_scheduled(self) -> None:
        """Make now the writes scheduled for the event loop's next turn: a connection that
        has read every message waiting calls it, so its acks need not wait for that turn."""
        for item in list(self._scheduled):
            self._flush_now(item)

    def _flush_now(self, item: E) -> None:
        """Write what is queued while `write_now` can; a flusher task takes the rest."""
        assert self._write_now is not None
        queue = item.queue
        if queue.scheduled is not None:
            queue.scheduled.cancel()
            queue.scheduled = None
        self._scheduled.discard(item)
        while queue.pending:
            batch = _take_batch(queue.pending)
            data = b"".join(p.data for p in batch)
            count = sum(p.records for p in batch)
            started = time.perf_counter()
            try:
                first = self._write_now(item, data, count)
            except Exception as exc:  # handed to each request's own error path
                _fail(batch, exc)
                continue
            if first is None:
                queue.pending[:0] = batch
                task = self._loop.create_task(self._hand_over(item))
                self._handing.add(task)
                task.add_done_callback(self._handing.discard)
                return
            self._written(item, batch, first, data, count, started)
        self._finished(item)
        self._idle()

    async def _hand_over(self, item: E) -> None:
        """Start a flusher in the task group (anyio starts tasks from a task, not a callback)."""
        try:
            self._tg.start_soon(self._flush_loop, item)
        except RuntimeError as exc:  # the store is closing
            _fail(item.queue.pending, exc)
            item.queue.pending.clear()
            self._finished(item)

    async def _flush_loop(self, item: E) -> None:
        queue = item.queue
        try:
            while queue.pending:
                batch = queue.writing = _take_batch(queue.pending)
                data = b"".join(p.data for p in batch)
                count = sum(p.records for p in batch)
                started = time.perf_counter()
                try:
                    first = await self._write(item, data, count)
                except Exception as exc:  # handed to each request's own error path
                    _fail(batch, exc)
                    continue
                self._written(item, batch, first, data, count, started)
        finally:
            queue.writing = []
            self._finished(item)
        self._idle()

    def _written(
        self, item: E, batch: list[Pending], first: int, data: bytes, count: int, started: float
    ) -> None:
        """Resolve the batch's waiters, then call the hooks."""
        index = first
        for pending in batch:
            if not pending.future.done():
                pending.future.set_result(index)
            index += pending.records
        seconds = time.perf_counter() - started
        try:
            for flush_hook in self.flush_hooks:
                flush_hook(count, seconds)
        except Exception:  # nor may a metric's: the flush runs in a reader or a callback
            logger.exception("flush hook failed for %s", item.commit)
        for hook in self.hooks:
            try:
                hook(item.commit, first, data, count)
            except Exception:  # a watcher's fault must not stop appends
                logger.exception("commit hook failed for %s", item.commit)

    def _finished(self, item: E) -> None:
        item.queue.flushing = False
        self._active.discard(item)


def _take_batch(pending: list[Pending]) -> list[Pending]:
    """Whole requests up to MAX_FLUSH_BYTES (always at least one)."""
    size = 0
    n = 0
    for item in pending:
        if n and size + len(item.data) > MAX_FLUSH_BYTES:
            break
        size += len(item.data)
        n += 1
    batch = pending[:n]
    del pending[:n]
    return batch


def _fail(batch: list[Pending], exc: Exception) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
