"""The background half of MetricLogger: batches, sends, acknowledges, reconnects.

Runs on its own thread and event loop. The caller's thread only appends
`(name, value, step)` tuples (and flush markers) to a deque; the shipper pops
them, assigns default steps, validates, cuts batches of at most `batch_size`
points (a partial batch leaves every `flush_interval`, or at once for a flush),
and sends each batch as one LOG_METRICS, several in flight on one connection.

Every batch stays in `unacked` (ordered by sequence number) until its SUCCESS
arrives. When the connection drops, or the daemon answers with a transient
error (RETRYABLE), the shipper reconnects with exponential backoff and resends
every unacknowledged batch in order before new ones, so nothing is lost; only
a batch written just before the drop (its ack lost with the connection) can be
stored twice. Any other error rejects the batch for good: its points are
counted in `rejections` by the server's message and never resent.

The first connection runs the start check (startcheck.py). A failed check, or
a handshake the daemon refuses (wrong key, address not allowed), is `fatal`:
the shipper stops and every point not yet acknowledged counts as rejected.
Each distinct problem is logged once; repeats are only counted.
"""

import asyncio
import contextlib
import logging
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.enums import ErrorCode
from protocol.requests import POINT

from .connection import Client
from .errors import RETRYABLE, FetchmlConnectionError, FetchmlError
from .settings import Settings
from .startcheck import check_start
from .transport import backoff_delay

logger = logging.getLogger(__name__)


class FlushMarker:
    """Put in the queue by flush(); set once every point queued before it is acknowledged."""

    __slots__ = ("done", "threshold")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.threshold = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ShipperConfig:
    commit: bytes
    settings: Settings
    batch_size: int = 1000
    flush_interval: float = 0.05
    max_in_flight: int = 64
    create_experiment: bool = True
    job_name: str = ""
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    open_timeout: float = 10.0


class Shipper:
    def __init__(
        self,
        config: ShipperConfig,
        queue: "deque[Any]",
        names: dict[str, tuple[bytes, int]],
        on_fatal: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.space = threading.Event()
        """Set whenever acknowledged points leave the buffer (a blocked log() waits for it)."""
        self.started = threading.Event()
        """Set once the start check passed or failed, or the first connection attempt failed."""
        self.held = 0
        """Points taken from the queue and not yet acknowledged or rejected."""
        self.acknowledged = 0
        self.rejected = 0
        self.rejections: dict[str, int] = {}
        """Rejected points by reason (the server's message, or why the client refused)."""
        self.rejected_code = ErrorCode.UNKNOWN_ERROR
        """The code of the first rejection."""
        self.resent_batches = 0
        self.reconnects = 0
        self.last_error: FetchmlError | None = None
        self.fatal: FetchmlError | None = None
        self.notes: dict[str, int] = {}
        """Each distinct problem logged so far, with how often it happened."""
        self.stop = False
        self.abort = False
        self._on_fatal = on_fatal
        self._checked = False
        self._unacked: dict[int, tuple[int, bytes]] = {}
        """Batches sent or to send, by sequence number: (point count, LOG_METRICS body)."""
        self._ready: deque[int] = deque()
        self._markers: deque[FlushMarker] = deque()
        self._parts: list[bytes] = []
        self._count = 0
        self._seq = 0
        self._inflight = 0
        self._next_step: dict[str, int] = {}
        self._names = names
        """Metric names checked by MetricLogger.log(), with their encoding and length."""
        self._created = not config.create_experiment
        self._wake: asyncio.Event | None = None
        self._broken: asyncio.Event | None = None
        self._last_partial = 0.0

    # -- called from any thread via loop.call_soon_threadsafe ------------------

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the worker ----------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.queue and not self._count and not self._unacked

    async def run(self) -> None:
        self._wake = asyncio.Event()
        failures = 0
        connected_once = False
        try:
            while not self.abort and self.fatal is None and not (self.stop and self.idle):
                if failures:
                    await self._backoff(failures)
                    if self.abort:
                        break
                try:
                    client = await Client.connect(
                        self.config.settings.url,
                        self.config.settings.api_key,
                        open_timeout=self.config.open_timeout,
                    )
                except FetchmlConnectionError as exc:
                    failures += 1
                    self._note(exc, "cannot connect")
                    self.started.set()
                    continue
                except FetchmlError as exc:  # refused handshake (key, address) or bad URL
                    self._fail(exc)
                    break
                if connected_once:
                    self.reconnects += 1
                    logger.info("metric logger %s: reconnected", self.config.commit.hex()[:12])
                connected_once = True
                try:
                    if await self._session(client):
                        failures = 0
                    else:
                        failures += 1
                finally:
                    await self._close(client)
        finally:
            self.started.set()

    async def _close(self, client: Client) -> None:
        """Close a connection; when aborting, drop it without waiting for the daemon."""
        if not self.abort:
            await client.close()
            return
        client.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.wait_closed()

    def _fail(self, exc: FetchmlError) -> None:
        """Stop for good: every point logged and not acknowledged is rejected for `exc`."""
        self.fatal = self.last_error = exc
        self._on_fatal()
        logger.error("metric logger %s: %s", self.config.commit.hex()[:12], exc)
        self._parts.clear()
        self._unacked.clear()
        self._ready.clear()
        lost, self.held, self._count = self.held, 0, 0
        while self.queue:
            item = self.queue.popleft()
            if item.__class__ is tuple:
                lost += 1
            else:
                self._markers.append(item)
        while self._markers:
            self._markers.popleft().done.set()
        if lost:
            self.note_rejected(lost, str(exc), exc.code)
        self.space.set()

    async def _backoff(self, failures: int) -> None:
        """Wait before the next connection attempt (cut short only by an abort)."""
        cfg = self.config
        delay = backoff_delay(failures, cfg.initial_backoff, cfg.max_backoff)
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                while not self.abort:
                    self._wake.clear()
                    await self._wake.wait()

    def _note(self, exc: FetchmlError, what: str) -> None:
        """Remember a transient problem; log it the first time it happens (repeats are counted)."""
        self.last_error = exc
        message = f"metric logger {self.config.commit.hex()[:12]}: {what}: {exc}"
        seen = self.notes.get(message, 0)
        self.notes[message] = seen + 1
        logger.log(logging.DEBUG if seen else logging.WARNING, "%s", message)

    def note_rejected(self, count: int, why: str, code: ErrorCode) -> None:
        if not self.rejected:
            self.rejected_code = code
        self.rejected += count
        self.rejections[why] = self.rejections.get(why, 0) + count

    async def _session(self, client: Client) -> bool:
        """Send on one connection until done or broken. True if anything was acknowledged."""
        assert self._wake is not None
        broken = self._broken = asyncio.Event()
        acked_before = self.acknowledged
        if not self._checked:
            try:
                await check_start(client, self.config.commit, self.config.create_experiment)
            except FetchmlConnectionError as exc:
                self._note(exc, "connection lost")
                return False
            except FetchmlError as exc:
                if exc.code not in RETRYABLE:
                    self._fail(exc)
                    return False
                self._note(exc, "start check inconclusive")  # the daemon decides per batch
            self._checked = True
            self.started.set()
        if not self._created:
            try:
                await client.create_experiment(
                    self.config.commit, self.config.job_name, exist_ok=True
                )
            except FetchmlConnectionError as exc:
                self._note(exc, "connection lost")
                return False
            except FetchmlError as exc:
                if exc.code in RETRYABLE:
                    self._note(exc, "creating the experiment failed")
                    return False
                self._note(exc, "cannot create the experiment")
            self._created = True
        self._ready = deque(self._unacked)
        self.resent_batches += len(self._ready)
        loop = asyncio.get_running_loop()
        self._last_partial = loop.time()
        async with asyncio.TaskGroup() as tg:
            while not self.abort and not broken.is_set():
                now = loop.time()
                tick = now - self._last_partial >= self.config.flush_interval
                if tick:
                    self._last_partial = now
                self._drain(emit_partial=tick or self.stop)
                while self._ready and self._inflight < self.config.max_in_flight:
                    seq = self._ready.popleft()
                    self._inflight += 1
                    tg.create_task(self._send(client, seq))
                if self.stop and self.idle:
                    break
                self._wake.clear()
                wait = self.config.flush_interval - (loop.time() - self._last_partial)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.001)):
                        await self._wake.wait()
            if self.abort:
                client.abort()  # fails what is in flight, so the task group can end
        return self.acknowledged > acked_before

    def _drain(self, emit_partial: bool) -> None:
        """Encode queued points into batch bodies, within the in-flight budget.

        Each point becomes its LOG_METRICS wire bytes at once (protocol.requests.POINT
        and the encoded name, cached per name), so a batch is a ready body and a
        resend costs nothing. `held` goes up once the items have left the queue
        (the caller's bound may briefly undercount by one drain, never overcount).
        """
        cfg = self.config
        size = cfg.batch_size
        room = (cfg.max_in_flight - self._inflight - len(self._ready)) * size - self._count
        queue = self.queue
        take = min(len(queue), room)
        if take > 0:
            not_points = 0
            parts = self._parts
            names = self._names
            next_step = self._next_step
            pack = POINT.pack
            popleft = queue.popleft
            for _ in range(take):
                item = popleft()
                if item.__class__ is not tuple:
                    not_points += 1
                    self._emit()
                    item.threshold = self._seq
                    self._markers.append(item)
                    continue
                name, value, step = item
                raw, length = names[name]
                if step is None:
                    step = next_step.get(name, 0)
                try:
                    parts.append(pack(step, value, length))
                except (struct.error, TypeError) as exc:
                    not_points += 1
                    self._refuse(name, value, step, exc)
                    continue
                parts.append(raw)
                next_step[name] = step + 1
                self._count += 1
                if self._count >= size:
                    self._emit()
            self.held += take - not_points
        if emit_partial:
            self._emit()
        self._check_markers()

    def _refuse(self, name: str, value: object, step: int, exc: Exception) -> None:
        """A point the client cannot encode (its value, or a default step past 2**32 - 1)."""
        why = f"metric {name!r} not sent: {exc}"
        if why not in self.rejections:
            logger.error("metric logger: %s (value %r, step %d)", why, value, step)
        self.note_rejected(1, why, ErrorCode.INVALID_REQUEST)

    def _emit(self) -> None:
        if not self._count:
            return
        self._seq += 1
        self._unacked[self._seq] = (self._count, b"".join(self._parts))
        self._ready.append(self._seq)
        self._parts.clear()
        self._count = 0

    async def _send(self, client: Client, seq: int) -> None:
        count, body = self._unacked[seq]
        try:
            await client.log_encoded(self.config.commit, count, body)
        except FetchmlError as exc:
            if isinstance(exc, FetchmlConnectionError) or exc.code in RETRYABLE:
                self._break(exc)
                return
            if exc.code == ErrorCode.RESOURCE_NOT_FOUND and self.config.create_experiment:
                self._created = False  # pruned meanwhile: create it again, then resend
                self._break(exc)
                return
            self.last_error = exc
            why = str(exc)
            if why not in self.rejections:
                logger.error(
                    "metric logger %s: the daemon rejected %d points: %s (further rejections "
                    "are counted, not logged)",
                    self.config.commit.hex()[:12],
                    count,
                    why,
                )
            self.note_rejected(count, why, exc.code)
            self._settle(seq)
        else:
            self.acknowledged += count
            self._settle(seq)
        finally:
            self._inflight -= 1
            self.wake()

    def _break(self, exc: FetchmlError) -> None:
        assert self._broken is not None
        if not self._broken.is_set():
            self._note(exc, "batch not acknowledged, will resend")
            self._broken.set()

    def _settle(self, seq: int) -> None:
        count, _ = self._unacked.pop(seq)
        self.held -= count
        self.space.set()
        self._check_markers()

    def _check_markers(self) -> None:
        markers = self._markers
        if not markers:
            return
        lowest = next(iter(self._unacked), None)
        while markers and (lowest is None or markers[0].threshold < lowest):
            markers.popleft().done.set()
