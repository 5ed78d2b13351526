"""The I/O half of MetricLogger: connect, send, back off; the Batcher decides the rest.

Runs on the worker thread's event loop (worker.py). Every `flush_interval`
(at most SEND_CHECK_S), once after the answers read together, and at once
when the caller's thread wakes it (a flush, a close, a full buffer: `wake`,
through call_soon_threadsafe), it lets the Batcher (batches.py) turn the
caller's queue into LOG_METRICS_AT messages and sends them, every batch cut
together in one write, several in flight on one connection. Each answer is
taken in the callback that reads it (`Answer`), so a flush() waiting on it
returns without another round of the loop: SUCCESS acknowledges a batch; an
error other than a transient one (RETRYABLE) rejects it for good.

A caller busy in Python holds the interpreter lock for a whole switch
interval (5 ms) each time the worker lets go of it (a socket call, a long
numpy call), so the worker's turns are few: the answers read together share
one pump, and a caller that finds Batcher.lag points waiting encodes them
itself (`catch_up`), so the worker only sends and the queue never outgrows
the pipeline while the caller logs. Run
document changes (`patches`, queued by the caller; a heartbeat every
`heartbeat_s`) go out as UPDATE_RUNs one at a time, in order, retried like
batches (a refused one loses only itself).

When the connection drops, or the daemon answers with a transient error,
the shipper reconnects, to the next of its URLs (failover.py) and with
exponential backoff once all of them failed in a row, reads what the run holds
from the window's start (LIST_RUNS for the count, QUERY_METRICS for the
records) so the Batcher can skip what was stored though its answer was lost,
and the Batcher puts every other unacknowledged batch back in line, in
order, before new ones: nothing is lost and nothing is stored twice. After
an error answer, batches go one at a time until the refused one is stored.

A flush() in the caller's thread may send instead of the worker
(`flush_inline`): while the session is live, nothing is in flight or cut
and waiting, and at most LEND_POINTS points are queued, it cuts them into
batches under `lock` and sends them on a blocking connection of its own
(a SyncClient); the worker's pump sends nothing meanwhile, so the order on
the wire is the order logged. A plain acknowledgement is settled in the
caller's thread. Any other answer, and a lost connection, go to the worker
as the answers of its own batches would: it reconnects and reconciles the
window, so a batch stored whose answer was lost is not sent again.

The first connection runs the start check (startcheck.py) and starts the run
(CREATE_EXPERIMENT when it is missing, then UPDATE_RUN). A failed check, or a
handshake the daemon refuses (wrong key, address not allowed), is `fatal`:
the shipper stops and every point not yet acknowledged counts as rejected.
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from fetchml.protocol.enums import ErrorCode, PacketType
from fetchml.protocol.errors import MalformedResponse
from fetchml.protocol.responses import HEADER, Error, Response, Success, decode_response

from .batches import Batch, Batcher
from .connection import Client
from .errors import (
    RETRYABLE,
    ConnectionLost,
    FetchmlConnectionError,
    FetchmlError,
    ProtocolViolation,
    error_from,
)
from .failover import Failover
from .ledger import Ledger
from .pipeline import MAX_MESSAGE_BYTES, describe_response
from .resume import stored_after
from .settings import Settings
from .startcheck import check_start
from .sync import SyncClient
from .transport import backoff_delay

logger = logging.getLogger(__name__)

SEND_CHECK_S = 0.05
"""The longest a full batch waits to be sent (log() does not wake the worker per batch)."""
LEND_POINTS = 256
"""A flush() that finds at most this many points queued may send them itself (`flush_inline`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShipperConfig:
    commit: bytes
    settings: Settings
    batch_size: int = 10_000
    flush_interval: float = 0.05
    max_in_flight: int = 64
    max_message_bytes: int = MAX_MESSAGE_BYTES
    create_experiment: bool = True
    job_name: str = ""
    run_patch: Mapping[str, Any] | None = None
    """The UPDATE_RUN that starts the run; None for the old form (no run document)."""
    fresh: bool = False
    """A new random run ID: nothing to look up at start."""
    heartbeat_s: float = 30.0
    timeout: float | None = 60.0
    """How long a flush sending on its own connection waits for the daemon (close_timeout)."""
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    open_timeout: float = 10.0


class Shipper:
    def __init__(
        self,
        config: ShipperConfig,
        queue: list[Any],
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
        self._careful_until = 0
        """After an error answer, batches up to this one go one at a time (see _send)."""
        self._wake: asyncio.Event | None = None
        self._live: tuple[Client, asyncio.TaskGroup] | None = None
        """The connection being sent on, and its session's tasks (None between sessions)."""
        self._broken: asyncio.Event | None = None
        self._last_partial = 0.0
        self.patches: deque[dict[str, Any]] = deque()
        """Run document changes queued by the caller's thread, in order."""
        self._patch: dict[str, Any] | None = None
        """The next patch to send (taken from `patches`, or one to send again)."""
        self._patching = False
        self._next_heartbeat = 0.0
        self._warned_writer = False
        self._pump_due = False
        """A pump is scheduled for the answers being read."""
        self._sent = False
        """A batch went out since the window was last reconciled."""
        self.lock = threading.Lock()
        """Held while the Batcher is worked on: by the worker, by a caller's flush cutting
        or settling what it sends itself, and by a log() that catches up (`catch_up`)."""
        self._lent = False
        """A caller's flush is sending batches on its own connection: the worker sends none."""
        self._inline: SyncClient | None = None
        self._inline_after = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- called from any thread via loop.call_soon_threadsafe ------------------

    def wake(self) -> None:
        """Something to do: on a live connection, cut and send what is due at once (a flush()
        waits on this); the session loop itself wakes only to stop, or when broken."""
        self._pump()
        if self._wake is not None and (self._live is None or self.stop or self.abort):
            self._wake.set()

    # -- called from the caller's thread, by flush() ----------------------------

    def flush_inline(self) -> bool:
        """Send what is queued on the caller's own blocking connection (a SyncClient, opened
        at the first such flush) and settle it, without waking the worker: handing a flush
        to the worker's thread and back costs about as much as the round trip itself.

        Only during a live session, with nothing in flight, waiting to be sent or unsettled,
        and at most LEND_POINTS points queued; the worker sends nothing meanwhile (`_lent`),
        so batches stay in order. True if everything queued is now acknowledged (no flush
        token is needed: nothing else was unsettled). False to
        let the worker send it: it was not lent, or something other than a plain
        acknowledgement came back, which the worker then takes as its own answer (a lost
        connection makes it reconnect and reconcile the window, as for its own batches).
        """
        batcher = self.batcher
        with self.lock:
            if (
                self._live is None
                or self._lent
                or self._inflight
                or batcher.unacked
                or batcher.claim is not None
                or batcher.waiting > LEND_POINTS
                or self.stop
                or self._broken is None
                or self._broken.is_set()
                or not self._bold()
                or time.monotonic() < self._inline_after
            ):
                return False
            batcher.drain(LEND_POINTS, cut=True)
            batches = list(iter(batcher.next_batch, None))
            if not batches:
                return True
            self._lent = self._sent = True
            self._inflight += len(batches)
        try:
            packets = self._inline_client().exchange([batch.message for batch in batches])
        except BaseException as exc:  # an interrupt too: the worker must get them back
            self._inline_after = time.monotonic() + self.config.max_backoff
            lost = exc if isinstance(exc, FetchmlConnectionError) else ConnectionLost(repr(exc))
            self._call(self._returned, batches, [lost] * len(batches))
            if isinstance(exc, FetchmlError):
                return False
            raise
        if not all(map(acknowledges, batches, packets)):
            self._call(self._returned, batches, list(map(outcome_of, packets)))
            return False
        with self.lock:
            for batch in batches:
                batcher.acknowledged(batch.seq)
            self._inflight -= len(batches)
            self._lent = False
        if not self.space.is_set():
            self.space.set()
        if batcher.waiting or self._live is None:
            self._call(self.wake)
        return True

    def catch_up(self) -> None:
        """Encode every point waiting in the queue, in the caller's thread (log() found
        Batcher.lag of them), and wake the worker to send them. A caller that logs in a
        tight loop holds the interpreter lock; the worker, which gets it back only once per
        switch interval (5 ms), would fall behind, and the backlog would be sent at close()
        instead of while the caller logs."""
        batcher = self.batcher
        with self.lock:
            claim = batcher.claim_all()
        if claim is None:
            return
        steps = dict(batcher.next_step)
        encoded = None
        try:
            encoded = batcher.encode(claim)  # without the lock: the worker sends meanwhile
        finally:
            with self.lock:
                if encoded is None:  # interrupted: encode it again, from the same steps
                    batcher.next_step = steps
                    encoded = batcher.encode(claim)
                batcher.add_claim(claim, encoded)
        if self._loop is not None:
            self._call(self.wake)

    def close_inline(self) -> None:
        """Close the caller's connection (after the worker stopped)."""
        if self._inline is not None:
            self._inline.close()

    def _inline_client(self) -> SyncClient:
        if self._inline is None:
            cfg = self.config
            self._inline = SyncClient(
                cfg.settings,
                open_timeout=cfg.open_timeout,
                timeout=cfg.timeout,
                handshake_key=True,
                on_event=None,
                max_message_bytes=cfg.max_message_bytes,
            )
        return self._inline

    def _returned(self, batches: list[Batch], outcomes: list[Response | BaseException]) -> None:
        """On the worker's loop: lent batches answered otherwise than plainly, or lost."""
        self._lent = False
        for batch, outcome in zip(batches, outcomes, strict=True):
            self._answered(batch, outcome)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker has stopped
            self._loop.call_soon_threadsafe(callback, *args)

    # -- the worker ----------------------------------------------------------

    async def run(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        urls = Failover(
            cfg.settings.urls,
            lambda rounds: backoff_delay(rounds, cfg.initial_backoff, cfg.max_backoff),
        )
        wait = 0.0
        connected_once = False
        try:
            while not self.abort and self.fatal is None:
                if self.stop and self.idle:
                    break
                if wait:
                    await self._backoff(wait)
                    if self.abort:
                        break
                url = urls.url
                try:
                    client = await Client.connect(
                        url, cfg.settings.api_key, open_timeout=cfg.open_timeout
                    )
                except FetchmlConnectionError as exc:
                    wait = urls.failed()
                    self.ledger.note(exc, "cannot connect")
                    if urls.rounds:  # every URL tried: the start check waits for one
                        self.started.set()
                    continue
                except FetchmlError as exc:  # refused handshake (key, address) or bad URL
                    self._fail(exc)
                    break
                if connected_once:
                    self.ledger.reconnects += 1
                    logger.info("metric logger %s: reconnected to %s", self.ledger.label, url)
                connected_once = True
                try:
                    if await self._session(client):
                        urls.dropped()
                        wait = 0.0
                    else:
                        wait = urls.failed()
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
        with self.lock:
            lost = self.batcher.drop_all()
        if lost:
            self.ledger.reject(lost, str(exc), exc.code)
        self.space.set()

    async def _backoff(self, delay: float) -> None:
        """Wait before the next connection attempt (cut short only by an abort)."""
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                while not self.abort:
                    self._wake.clear()
                    await self._wake.wait()

    @property
    def idle(self) -> bool:
        return self.batcher.idle and not self.patches and self._patch is None and not self._patching

    async def _prepare(self, client: Client) -> bool:
        """The start check and the run's start (first connection only), then the experiment,
        then what the run holds of the window. False to reconnect."""
        cfg = self.config
        try:
            if not self._checked:
                try:
                    state = await check_start(
                        client, cfg.commit, cfg.create_experiment, fresh=cfg.fresh
                    )
                    self.batcher.base = state.count
                    if cfg.run_patch is not None:
                        self._created = state.exists is True
                except FetchmlConnectionError:
                    raise
                except FetchmlError as exc:
                    if exc.code not in RETRYABLE:
                        self._fail(exc)
                        return False
                    self.ledger.note(exc, "start check inconclusive")  # batches will tell
                if cfg.run_patch is not None and not await self._start_run(client):
                    return False
                self._checked = True
                self.started.set()
            if not self._created:
                await client.create_experiment(cfg.commit, cfg.job_name, exist_ok=True)
            if self._sent and self.batcher.base is not None and self.batcher.unacked:
                try:
                    await self._reconcile(client)
                except FetchmlError as exc:
                    if isinstance(exc, FetchmlConnectionError) or exc.code in RETRYABLE:
                        raise
                    self.batcher.base = None  # cannot read the run back: resend, as before
                    self.ledger.note(exc, "cannot read the run back")
        except FetchmlError as exc:
            if isinstance(exc, FetchmlConnectionError) or exc.code in RETRYABLE:
                self.ledger.note(exc, "connection lost before sending")
                return False
            self.ledger.note(exc, "cannot create the experiment")
        self._created = True
        return True

    async def _start_run(self, client: Client) -> bool:
        """CREATE_EXPERIMENT (unless it exists) and the run's first UPDATE_RUN; a refusal is
        fatal, a transient error leaves the patch queued. False to reconnect."""
        cfg = self.config
        assert cfg.run_patch is not None
        patch = dict(cfg.run_patch)
        try:
            if not self._created:
                await client.create_experiment(cfg.commit, cfg.job_name, exist_ok=True)
                self._created = True
            await client.update_run(cfg.commit, patch)
        except FetchmlError as exc:
            if not isinstance(exc, FetchmlConnectionError) and exc.code not in RETRYABLE:
                self._fail(exc)
                return False
            self._patch = patch
            self.ledger.note(exc, "run not started yet, will retry")
            return not isinstance(exc, FetchmlConnectionError)
        self._next_heartbeat = asyncio.get_running_loop().time() + cfg.heartbeat_s
        return True

    async def _reconcile(self, client: Client) -> None:
        """Skip what the run stored of the window before the connection dropped."""
        batcher = self.batcher
        assert batcher.base is not None
        with self.lock:
            window = batcher.in_window
        count, stored = await stored_after(client, self.config.commit, batcher.base, window)
        self._sent = False
        with self.lock:
            whole = batcher.reconcile(count, stored)
        if not whole and not self._warned_writer:
            self._warned_writer = True
            logger.warning(
                "metric logger %s: possible duplicates: another writer appended to the run; "
                "sending every unacknowledged point again",
                self.ledger.label,
            )

    async def _session(self, client: Client) -> bool:
        """Send on one connection until done or broken. True if anything was acknowledged."""
        assert self._wake is not None
        broken = self._broken = asyncio.Event()
        ledger, batcher, cfg = self.ledger, self.batcher, self.config
        acked_before = ledger.acknowledged
        if not await self._prepare(client):
            return False
        with self.lock:
            batcher.resend_all()
        loop = asyncio.get_running_loop()
        self._last_partial = loop.time()
        async with asyncio.TaskGroup() as tg:
            self._live = (client, tg)
            try:
                while not self.abort and not broken.is_set():
                    self._pump()
                    if self.stop and self.idle:
                        break
                    self._wake.clear()
                    wait = cfg.flush_interval - (loop.time() - self._last_partial)
                    wait = min(wait, SEND_CHECK_S)  # full batches go at least this often
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(wait, 0.001)):
                            await self._wake.wait()
            finally:
                with self.lock:
                    self._live = None
            if self.abort:
                client.abort()  # fails what is in flight
            while self._inflight and not self.abort:  # the answers due on this connection
                self._wake.clear()
                await self._wake.wait()
        return ledger.acknowledged > acked_before

    def _pump(self) -> None:
        """Cut what is due (a flush token at once, a partial batch every flush_interval or
        when stopping) and send it, within the window; then the next run change. Nothing
        while a caller's flush sends on its own (it wakes the worker when done)."""
        if self._live is None or self.abort or self._broken is None or self._broken.is_set():
            return
        now = asyncio.get_running_loop().time()
        with self.lock:
            if self._lent:
                self._last_partial = now  # the caller's flush cuts and sends what is queued
            else:
                self._pump_batches(*self._live, now)
        self._update_run(*self._live, now)

    def _pump_batches(self, client: Client, tg: asyncio.TaskGroup, now: float) -> None:
        """The pump's batches, with the lock held."""
        batcher, cfg = self.batcher, self.config
        tick = now - self._last_partial >= cfg.flush_interval
        if tick:
            self._last_partial = now
        most = cfg.max_in_flight if self._bold() else 1
        slots = cfg.max_in_flight - self._inflight - len(batcher.ready)
        batcher.drain(slots, cut=tick or self.stop)
        batches = []
        while self._inflight < most and (batch := batcher.next_batch()):
            self._inflight += 1
            batches.append(batch)
        if batches:
            self._sent = True
            self._send(client, tg, batches)

    def _update_run(self, client: Client, tg: asyncio.TaskGroup, now: float) -> None:
        """Send the next queued run change (a heartbeat when due and nothing else is)."""
        if self.config.run_patch is None:
            return
        if self._patch is None and self.patches:
            self._patch = self.patches.popleft()
        if now >= self._next_heartbeat and not self.stop and self._patch is None:
            self._patch = {"heartbeat": True}
        if self._patch is None or self._patching:
            return
        patch, self._patch = self._patch, None
        self._patching = True
        self._next_heartbeat = now + self.config.heartbeat_s
        tg.create_task(self._send_patch(client, patch))

    async def _send_patch(self, client: Client, patch: dict[str, Any]) -> None:
        try:
            await client.update_run(self.config.commit, patch)
        except FetchmlError as exc:
            if isinstance(exc, FetchmlConnectionError) or exc.code in RETRYABLE:
                if self._patch is not None:
                    self.patches.appendleft(self._patch)
                self._patch = patch
                self._break(exc)
                return
            self.ledger.last_error = exc
            self.ledger.reject(0, f"run update {sorted(patch)} refused: {exc}", exc.code)
        finally:
            self._patching = False
            self.wake()

    def _bold(self) -> bool:
        """Whether batches may be pipelined: not while one refused with a transient error
        (or one sent with it) is unsettled, so that a batch stored on a second try never
        lands after one cut later (only those already in flight when the error came can)."""
        lowest = next(iter(self.batcher.unacked), None)
        return lowest is None or lowest > self._careful_until

    def _send(self, client: Client, tg: asyncio.TaskGroup, batches: list[Batch]) -> None:
        """Send batches in one write, at once when the connection takes it (a task sends
        what it does not); `_answered` takes each answer as the connection reads it (or
        ConnectionLost for one it could not send)."""
        answers = [Answer(partial(self._answered, batch)) for batch in batches]
        messages = [batch.message for batch in batches]
        sent = client.send_now(messages, answers)
        if sent < len(batches):
            tg.create_task(client._submit(messages[sent:], answers[sent:]))

    def _answered(self, batch: Batch, outcome: Response | BaseException) -> None:
        """A batch's answer, or why there will be none: acknowledge, reject, or resend."""
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            if isinstance(outcome, Error):
                raise error_from(outcome.code, outcome.message, outcome.details)
            if not isinstance(outcome, Success):
                raise ProtocolViolation(f"expected SUCCESS, got {describe_response(outcome)}")
        except FetchmlError as exc:
            if isinstance(exc, FetchmlConnectionError) or exc.code in RETRYABLE:
                if not isinstance(exc, FetchmlConnectionError):
                    with self.lock:
                        self._careful_until = max(self._careful_until, *self.batcher.unacked)
                self._break(exc)
                return
            if exc.code == ErrorCode.RESOURCE_NOT_FOUND and self.config.create_experiment:
                self._created = False  # pruned meanwhile: create it again, then resend
                self._break(exc)
                return
            self.ledger.last_error = exc
            with self.lock:
                self.batcher.rejected(batch.seq, str(exc), exc.code)
        else:
            with self.lock:
                self.batcher.acknowledged(batch.seq)  # a flush() waiting on it returns now
        finally:
            self._inflight -= 1
            self.space.set()
            if not self._pump_due:  # once for every answer read together
                self._pump_due = True
                asyncio.get_running_loop().call_soon(self._pump_after_answers)

    def _pump_after_answers(self) -> None:
        self._pump_due = False
        self.wake()

    def _break(self, exc: FetchmlError) -> None:
        assert self._broken is not None and self._wake is not None
        if not self._broken.is_set():
            self.ledger.note(exc, "batch not acknowledged, will resend")
            self._broken.set()
            self._wake.set()


class Answer(asyncio.Future[Response]):
    """A request's future that hands its outcome to `then` as the connection resolves it, in
    the same step (an awaiting task would resume only on the loop's next round). An
    exception from `then` ends the connection, and its reader raises it; closing the
    connection re-raises it: the worker's crash."""

    def __init__(self, then: Callable[[Response | BaseException], None]) -> None:
        super().__init__()
        self._then = then

    def set_result(self, result: Response, /) -> None:
        super().set_result(result)
        self._then(result)

    def set_exception(self, exception: type | BaseException, /) -> None:
        super().set_exception(exception)
        error = self.exception()  # retrieved: nobody awaits this future
        assert error is not None
        self._then(error)


_SUCCESS = PacketType.SUCCESS.value


def acknowledges(batch: Batch, packet: bytes) -> bool:
    """Whether `packet` is the plain SUCCESS that acknowledges all of `batch` (its message
    the record count), checked by its bytes."""
    count = str(batch.count).encode()
    return (
        len(packet) == HEADER.size + 1 + len(count)
        and packet[0] == _SUCCESS
        and packet[HEADER.size] == len(count)
        and packet.endswith(count)
    )


def outcome_of(packet: bytes) -> Response | BaseException:
    try:
        return decode_response(packet)
    except MalformedResponse as exc:
        return ProtocolViolation(exc.message)
