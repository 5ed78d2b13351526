"""The I/O half of MetricLogger: connect, send, back off; the Batcher decides the rest.

Runs on the worker thread's event loop (worker.py). Every `flush_interval`,
or at once for a flush or close, it lets the Batcher (batches.py) turn the
caller's queue into LOG_METRICS messages and sends them, several in flight
on one connection, reporting each answer back: SUCCESS acknowledges a batch;
an error other than a transient one (RETRYABLE) rejects it for good.

When the connection drops, or the daemon answers with a transient error,
the shipper reconnects with exponential backoff and the Batcher puts every
unacknowledged batch back in line, in order, before new ones, so nothing is
lost; only a batch written just before the drop (its ack lost with the
connection) can be stored twice.

The first connection runs the start check (startcheck.py). A failed check, or
a handshake the daemon refuses (wrong key, address not allowed), is `fatal`:
the shipper stops and every point not yet acknowledged counts as rejected.
"""

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass

from fetchml.protocol.enums import ErrorCode

from .batches import Batch, Batcher, Item
from .connection import Client
from .errors import RETRYABLE, FetchmlConnectionError, FetchmlError
from .ledger import Ledger
from .pipeline import MAX_MESSAGE_BYTES
from .settings import Settings
from .startcheck import check_start
from .transport import backoff_delay

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShipperConfig:
    commit: bytes
    settings: Settings
    batch_size: int = 1000
    flush_interval: float = 0.05
    max_in_flight: int = 64
    max_message_bytes: int = MAX_MESSAGE_BYTES
    create_experiment: bool = True
    job_name: str = ""
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    open_timeout: float = 10.0


class Shipper:
    def __init__(
        self,
        config: ShipperConfig,
        queue: "deque[Item]",
        max_buffer: int = 1 << 62,
    ) -> None:
        self.config = config
        self.ledger = Ledger(config.commit.hex()[:12])
        self.batcher = Batcher(
            queue,
            self.ledger,
            key_hash=config.settings.key_hash,
            commit=config.commit,
            batch_size=config.batch_size,
            max_message_bytes=config.max_message_bytes,
            limit=max_buffer,
        )
        self.space = threading.Event()
        """Set whenever points leave the buffer (a blocked log() waits for it)."""
        self.started = threading.Event()
        """Set once the start check passed or failed, or the first connection attempt failed."""
        self.fatal: FetchmlError | None = None
        self.stop = False
        self.abort = False
        self._checked = False
        self._created = not config.create_experiment
        self._inflight = 0
        self._wake: asyncio.Event | None = None
        self._broken: asyncio.Event | None = None
        self._last_partial = 0.0

    # -- called from any thread via loop.call_soon_threadsafe ------------------

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the worker ----------------------------------------------------------

    async def run(self) -> None:
        self._wake = asyncio.Event()
        failures = 0
        connected_once = False
        try:
            while not self.abort and self.fatal is None:
                if self.stop and self.batcher.idle:
                    break
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
                    self.ledger.note(exc, "cannot connect")
                    self.started.set()
                    continue
                except FetchmlError as exc:  # refused handshake (key, address) or bad URL
                    self._fail(exc)
                    break
                if connected_once:
                    self.ledger.reconnects += 1
                    logger.info("metric logger %s: reconnected", self.ledger.label)
                connected_once = True
                try:
                    failures = 0 if await self._session(client) else failures + 1
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
        self.fatal = self.ledger.last_error = exc
        if lost := self.batcher.drop_all():
            self.ledger.reject(lost, str(exc), exc.code)
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

    async def _prepare(self, client: Client) -> bool:
        """The start check (first connection only), then the experiment. False to reconnect."""
        try:
            if not self._checked:
                try:
                    await check_start(client, self.config.commit, self.config.create_experiment)
                except FetchmlConnectionError:
                    raise
                except FetchmlError as exc:
                    if exc.code not in RETRYABLE:
                        self._fail(exc)
                        return False
                    self.ledger.note(exc, "start check inconclusive")  # batches will tell
                self._checked = True
                self.started.set()
            if not self._created:
                await client.create_experiment(
                    self.config.commit, self.config.job_name, exist_ok=True
                )
        except FetchmlError as exc:
            if isinstance(exc, FetchmlConnectionError) or exc.code in RETRYABLE:
                self.ledger.note(exc, "connection lost before sending")
                return False
            self.ledger.note(exc, "cannot create the experiment")
        self._created = True
        return True

    async def _session(self, client: Client) -> bool:
        """Send on one connection until done or broken. True if anything was acknowledged."""
        assert self._wake is not None
        broken = self._broken = asyncio.Event()
        ledger, batcher, cfg = self.ledger, self.batcher, self.config
        acked_before = ledger.acknowledged
        if not await self._prepare(client):
            return False
        batcher.resend_all()
        loop = asyncio.get_running_loop()
        self._last_partial = loop.time()
        async with asyncio.TaskGroup() as tg:
            while not self.abort and not broken.is_set():
                now = loop.time()
                tick = now - self._last_partial >= cfg.flush_interval
                if tick:
                    self._last_partial = now
                slots = cfg.max_in_flight - self._inflight - len(batcher.ready)
                batcher.drain(slots, cut=tick or self.stop)
                while self._inflight < cfg.max_in_flight and (batch := batcher.next_batch()):
                    self._inflight += 1
                    tg.create_task(self._send(client, batch))
                if self.stop and batcher.idle:
                    break
                self._wake.clear()
                wait = cfg.flush_interval - (loop.time() - self._last_partial)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.001)):
                        await self._wake.wait()
            if self.abort:
                client.abort()  # fails what is in flight, so the task group can end
        return ledger.acknowledged > acked_before

    async def _send(self, client: Client, batch: Batch) -> None:
        try:
            await client._success(batch.message)
        except FetchmlError as exc:
            if isinstance(exc, FetchmlConnectionError) or exc.code in RETRYABLE:
                self._break(exc)
                return
            if exc.code == ErrorCode.RESOURCE_NOT_FOUND and self.config.create_experiment:
                self._created = False  # pruned meanwhile: create it again, then resend
                self._break(exc)
                return
            self.ledger.last_error = exc
            self.batcher.rejected(batch.seq, str(exc), exc.code)
        else:
            self.batcher.acknowledged(batch.seq)
        finally:
            self._inflight -= 1
            self.space.set()
            self.wake()

    def _break(self, exc: FetchmlError) -> None:
        assert self._broken is not None
        if not self._broken.is_set():
            self.ledger.note(exc, "batch not acknowledged, will resend")
            self._broken.set()
