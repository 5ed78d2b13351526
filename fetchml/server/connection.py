"""One WebSocket connection: a reader that takes messages in and a writer that performs
what the sequencer (server/sequencer.py) hands out, strictly in request order.

Metric logging is pipelined: the reader queues the records for group commit and moves
on; the writer awaits each completion in turn, and the responses ready together (one
group commit's acks) go out in one write (fetchml/frames.py). While the reader waits for
a message, the metric logs that arrive are taken in by the transport's callback that read
them (`take`), so no task wakes for them; after each read, with no other message
waiting, group commit writes at once and, while the writer is idle, the ready responses
are sent right there: one request at a time is answered in the callback that read it.
Every other request wakes the reader and runs as a barrier (dispatch decides), and one
refused as it is read is answered in its turn. Beyond `max_inflight_requests` unanswered
requests nothing more is taken in, the reader stops reading and TCP pushes back.
"""

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from fetchml.protocol.enums import ErrorCode, JobStatus, Opcode
from fetchml.protocol.errors import ProtocolError
from fetchml.protocol.keys import key_hash
from fetchml.protocol.metrics import ack_packet, record_tails, records_at
from fetchml.protocol.requests import ClaimJob, Request, UpdateJob, decode_request
from fetchml.protocol.responses import Data, Error, Response, encode_response

from ..frames import Taking, received, send_frames, writable, write_frames
from .auth import Identity, KeyTable
from .dispatch import (
    Answer,
    Barrier,
    Outcome,
    Pipelined,
    StartWatch,
    accept_log,
    accept_log_at,
    dispatch,
)
from .errors import AuthenticationFailed, ServerError
from .fastscan import repeating_at
from .handlers import Context
from .http import Gate, Metrics, handshake_key
from .sequencer import Close, Sequencer
from .watch import SlowSubscriber, Subscriber

logger = logging.getLogger(__name__)


class _Acks:
    """Encoded SUCCESS acks, made once per second and count."""

    def __init__(self) -> None:
        self._second = 0
        self._cache: dict[int, bytes] = {}

    def get(self, records: int | None) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._cache = now, {}
        key = -1 if records is None else records
        packet = self._cache.get(key)
        if packet is None:
            packet = self._cache[key] = ack_packet(now, records)
        return packet


ACKS = _Acks()

BATCH_PACKETS = 256
"""At most this many responses go in one write: the transport's high-water mark stops the
writer (a peer that does not read) within one batch of its limit."""


_LOG_NAMES = {opcode: opcode.name for opcode in (Opcode.LOG_METRIC, Opcode.LOG_METRICS)}
"""An enum's `name` is a property: on the path of every log, a dict is cheaper."""


_LOGS = frozenset((Opcode.LOG_METRIC, Opcode.LOG_METRICS, Opcode.LOG_METRICS_AT))
"""Opcodes of the requests `take` takes in the transport's callback."""


def error_packet(code: ErrorCode, message: str, details: str = "") -> bytes:
    return encode_response(
        Error(timestamp=int(time.time()), code=code, message=message, details=details)
    )


class Connection:
    def __init__(
        self,
        ws: ServerConnection,
        ctx: Context,
        keys: Callable[[], KeyTable],
        metrics: Metrics,
        gate: Gate,
    ) -> None:
        self.ws = ws
        self.ctx = ctx
        self.keys = keys
        self.metrics = metrics
        self.gate = gate
        raw = handshake_key(ws.request.headers) if ws.request else None  # the gate checked it
        self.bound = key_hash(raw) if raw else None
        """The handshake's valid key: every request must carry it."""
        self.peer = ws.remote_address[0] if ws.remote_address else "?"
        self.watching: tuple[bytes, str] | None = None
        """The key of an accepted WATCH_METRICS and the commit it watches."""
        self._cached: tuple[bytes, KeyTable, Identity] | None = None
        self._reading = anyio.CancelScope()
        self._seq: Sequencer | None = None
        """Made with the first message: an idle connection holds little else."""
        self._shut: tuple[int, str] | None = None
        self._unread = received(ws)
        self.heard = time.monotonic()
        """When the last message came in: a connection silent for ping_interval_s is pinged."""
        self._pinging = False

    @property
    def accepted(self) -> int:
        """Requests accepted so far (applied or queued for group commit)."""
        return self._seq.accepted if self._seq else 0

    @property
    def answered(self) -> int:
        return self._seq.answered if self._seq else 0

    @property
    def queued(self) -> int:
        """Accepted requests whose final response is not sent yet, up to max_inflight_requests."""
        return self._seq.accepted - self._seq.answered if self._seq else 0

    def stop(self) -> None:
        """Stop reading (graceful shutdown): answer what was accepted, then close 1001."""
        self.shut(1001, "server shutting down")

    def shut(self, code: int, reason: str) -> None:
        """Stop reading, answer what was accepted, then close with `code` (first call wins)."""
        if self._shut is None:
            self._shut = (code, reason)
        self._reading.cancel()
        if self._seq is not None:
            self._seq.shut(code, reason)
            self._wake_writer()

    def revoked(self, keys: KeyTable, owner_of: Callable[[str], str | None]) -> str | None:
        """Why this connection may not stay open under `keys` (SIGHUP), if so; `owner_of`
        gives a watched experiment's owner (None: unknown)."""
        if not keys.allows_peer(self.peer):
            return "address not allowed"
        if self.bound is None and keys.require_key:
            return "handshake key required"
        if self.bound is not None and keys.lookup(self.bound) is None:
            return "key revoked"
        if self.watching is not None:
            key_hash, commit = self.watching
            who = keys.lookup(key_hash)
            if who is None or not who.can("jobs:read") or not who.sees(owner_of(commit)):
                return "key revoked"
        return None

    def needs_ping(self, now: float, interval: float) -> bool:
        return not self._pinging and now - self.heard >= interval

    async def ping(self, timeout: float) -> None:
        """Keepalive: a Ping, and a close 1011 when no Pong comes within `timeout`."""
        self._pinging = True
        try:
            pong = await self.ws.ping()
            with anyio.fail_after(timeout):
                await pong
        except TimeoutError:
            logger.info("closing %s: keepalive ping timeout", self.peer)
            await self.ws.close(1011, "keepalive ping timeout")
        except ConnectionClosed:
            pass
        finally:
            self._pinging = False
            self.heard = time.monotonic()

    async def serve(self) -> None:
        first: bytes | str | None = None
        with self._reading, contextlib.suppress(ConnectionClosed):
            first = await self.ws.recv()  # an idle connection waits here and holds little else
            self.heard = time.monotonic()
        close = self._shut
        if first is not None:
            close = await self._serve(first)
        if close is not None:
            # Unread messages would hide the peer's close frame: discard them while closing.
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._discard)
                await self.ws.close(*close)
                tg.cancel_scope.cancel()

    async def _serve(self, first: bytes | str) -> tuple[int, str] | None:
        """Read and answer until the sequencer closes (its code and reason) or the peer
        goes away (None)."""
        seq = self._seq = Sequencer(self._accept, self.ctx.config.server.max_inflight_requests)
        self._reading = anyio.CancelScope()  # a scope is entered once: a new one for this phase
        self._reader_wake: asyncio.Future[None] | None = None
        self._writer_wake: asyncio.Future[None] | None = None
        """What the reader or the writer awaits while it has nothing to do: a bare future,
        about a third of an anyio Event's cost, on the path of every request."""
        self._close: Close | None = None
        if self._shut:
            self.shut(*self._shut)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, seq, tg)
                with self._reading:
                    await self._reader(seq, first)
                if seq.closing is None:  # the peer went away: nothing left to answer
                    tg.cancel_scope.cancel()
        except* ConnectionClosed:
            pass  # the peer went away while a response was being sent
        return (self._close.code, self._close.reason) if self._close else None

    async def _discard(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in self.ws:
                pass

    def _wake_writer(self) -> None:
        _wake(self._writer_wake)
        self._writer_wake = None

    # -- reader --------------------------------------------------------------

    async def _reader(self, seq: Sequencer, message: bytes | str) -> None:
        """Take messages in while the sequencer allows; returns once it closes or the
        peer does. While it waits for a message, the connection takes the messages that
        arrive in the transport's callback instead (`take`)."""
        ws = self.ws
        recv = ws.recv
        taking = ws if isinstance(ws, Taking) and self._unread is not None else None
        while True:
            while not seq.reading and seq.closing is None:
                wake = self._reader_wake = asyncio.get_running_loop().create_future()
                await wake
            self._receive(seq, message)
            self.taken()
            if seq.closing is not None:
                return
            if taking:
                taking.taker = self
            try:
                message = await recv()
            except ConnectionClosed:
                return
            finally:
                if taking:
                    taking.taker = None
            self.heard = time.monotonic()

    def take(self, message: bytes) -> bool:
        """A metric log read while the reader waits, taken in as the reader would (False:
        another request, or one the sequencer may not take now: the reader takes it)."""
        seq = self._seq
        if seq is None or not seq.reading or not message or message[0] not in _LOGS:
            return False
        self.heard = time.monotonic()
        self._receive(seq, message)
        return True

    def _receive(self, seq: Sequencer, message: bytes | str) -> None:
        """Take a message in; the appends it makes wait for `taken`, which follows."""
        store = self.ctx.store
        store.defer_writes(True)
        try:
            seq.receive(message)
        finally:
            store.defer_writes(False)

    def taken(self) -> None:
        """After messages were taken in: write their appends and answer what is ready (or
        leave the writes to the event loop's next turn while more messages wait to be read),
        or wake the writer."""
        seq = self._seq
        assert seq is not None
        if self._unread is not None and not self._unread:
            self._answer_ready(seq)
        else:
            self.ctx.store.schedule_writes()
        if seq.peek() is not None:
            self._wake_writer()

    def _answer_ready(self, seq: Sequencer) -> None:
        """With no other message waiting to be read: make the writes group commit would
        make at the event loop's next turn, and, while the writer is idle, send the
        responses ready in order (as its first step would). One request at a time is
        then answered in the callback that read it."""
        self.ctx.store.flush_scheduled()
        if self._writer_wake is None or not writable(self.ws):  # the writer answers in order
            return
        batch: list[bytes] = []
        while len(batch) < BATCH_PACKETS:
            action = seq.peek()
            if isinstance(action, Answer):
                batch.append(action.packet)
            elif isinstance(action, Pipelined) and action.future.done():
                batch.append(self._completed(action))
            else:
                break
            seq.next_action()
            seq.done()
        if batch:
            write_frames(self.ws, batch)

    def _accept(self, message: bytes) -> Outcome:
        """Decode, authenticate, dispatch. Errors become ready ERROR packets."""
        opcode: Opcode | None = None
        try:
            fast = record_tails(message)
            if fast is not None:
                opcode = (
                    Opcode.LOG_METRIC if message[0] == Opcode.LOG_METRIC else Opcode.LOG_METRICS
                )
                self.metrics.requests[_LOG_NAMES[opcode]] += 1
                key, commit, tails = fast
                return accept_log(self.ctx, self._identify(key), opcode, commit.hex(), tails)
            at = repeating_at(message) or records_at(message)
            if at is not None:
                opcode = Opcode.LOG_METRICS_AT
                self.metrics.requests[opcode.name] += 1
                key, commit, records, count, latest = at
                who = self._identify(key)
                return accept_log_at(self.ctx, who, commit.hex(), records, count, latest)
            req = decode_request(message)
            opcode = req.OPCODE
            self.metrics.requests[opcode.name] += 1
            outcome = dispatch(self.ctx, self._identify(req.key_hash), req)
            if isinstance(outcome, StartWatch):
                self.watching = (outcome.key_hash, outcome.subscriber.commit)
            return outcome
        except (ProtocolError, ServerError) as exc:
            return Answer(self._error(opcode, exc))
        except Exception:
            logger.exception("internal error on %s from %s", opcode and opcode.name, self.peer)
            return Answer(self._error(opcode, None))

    def _identify(self, digest: bytes) -> Identity:
        if self.bound is not None and not hmac.compare_digest(digest, self.bound):
            self._auth_failed("request key differs from the handshake key")
        keys = self.keys()
        cached = self._cached
        if cached is not None and cached[1] is keys and hmac.compare_digest(cached[0], digest):
            return cached[2]
        who = keys.lookup(digest)
        if who is None:
            self._auth_failed("unknown key")
        assert who is not None
        if self._cached is None and self.bound is None:
            self.gate.unverified.discard(self)  # a valid key at last: no auth timeout
        self._cached = (digest, keys, who)
        return who

    def _auth_failed(self, why: str) -> None:
        """Counted per address; on a connection without a valid handshake key, the failure
        that throttles the address (and any while it is throttled) closes it."""
        if self.gate.failed(self.peer, why, counts=self.bound is None):
            self.shut(1008, "too many authentication failures")
        raise AuthenticationFailed("Invalid API key")

    def _error(self, opcode: Opcode | None, exc: ProtocolError | ServerError | None) -> bytes:
        code = exc.code if exc else ErrorCode.UNKNOWN_ERROR
        message = exc.message if exc else "internal error"
        details = exc.details if isinstance(exc, ServerError) else ""
        self.metrics.errors[opcode.name if opcode else "invalid", code.name] += 1
        return error_packet(code, message, details)

    # -- writer --------------------------------------------------------------

    async def _writer(self, seq: Sequencer, tg: anyio.abc.TaskGroup) -> None:
        """Perform the sequencer's actions in order until its Close. Responses ready at
        once (answers, completed logs) are sent together in one write; it goes out before
        the writer waits for anything, so no response waits on a later one."""
        batch: list[bytes] = []
        while True:
            if len(batch) >= BATCH_PACKETS:
                if not await self._send(batch, seq, tg):
                    return
                batch = []
            action = seq.next_action()
            if isinstance(action, Answer):
                batch.append(action.packet)
                seq.done()
                continue
            if isinstance(action, Pipelined) and action.future.done():
                batch.append(self._completed(action))
                seq.done()
                continue
            if batch:
                if not await self._send(batch, seq, tg):
                    return
                batch = []
            if action is None:
                wake = self._writer_wake = asyncio.get_running_loop().create_future()
                await wake
            elif isinstance(action, Pipelined):
                await asyncio.wait((action.future,))
                batch.append(self._completed(action))
                seq.done()
            elif isinstance(action, Barrier):
                with anyio.CancelScope(shield=True):  # once begun, a barrier's work finishes
                    batch.append(await self._run(action))
                seq.done()
            elif isinstance(action, StartWatch):
                seq.done()
                if not await self._send([ACKS.get(None)], seq, tg):
                    return
                sub = action.subscriber
                logger.info("watch %s from %d by %s", sub.commit, sub.next, self.peer)
                tg.start_soon(self._watch, sub)
            else:
                self._close = action
                tg.cancel_scope.cancel()  # the reader, if still waiting, and a watch pump
                return

    async def _send(self, packets: list[bytes], seq: Sequencer, tg: anyio.abc.TaskGroup) -> bool:
        """Send `packets` in one write, then let the reader go on if it may; False when
        the peer went away."""
        try:
            await send_frames(self.ws, packets)
        except ConnectionClosed:
            tg.cancel_scope.cancel()
            return False
        if seq.reading:
            _wake(self._reader_wake)
            self._reader_wake = None
        return True

    def _completed(self, pending: Pipelined) -> bytes:
        """The response to a log whose records are written (or failed)."""
        try:
            pending.future.result()
        except ServerError as exc:
            return self._error(pending.opcode, exc)
        except Exception:
            logger.exception("internal error completing %s", pending.opcode.name)
            return self._error(pending.opcode, None)
        return ACKS.get(None if pending.opcode == Opcode.LOG_METRIC else pending.records)

    async def _run(self, barrier: Barrier) -> bytes:
        req, who = barrier.req, barrier.who
        started = time.perf_counter()
        try:
            result = barrier.run()
            response = await result if isinstance(result, Awaitable) else result
        except ServerError as exc:
            logger.info(
                "user=%s op=%s%s -> %s %s",
                who.user,
                req.OPCODE.name,
                _commit(req),
                exc.code.name,
                exc.message,
            )
            return self._error(req.OPCODE, exc)
        except Exception:
            logger.exception(
                "internal error: user=%s op=%s%s", who.user, req.OPCODE.name, _commit(req)
            )
            return self._error(req.OPCODE, None)
        logger.log(
            logging.DEBUG if _hum(req, response) else logging.INFO,
            "user=%s op=%s%s ok %.1fms",
            who.user,
            req.OPCODE.name,
            _commit(req),
            (time.perf_counter() - started) * 1000,
        )
        return encode_response(response)

    async def _watch(self, sub: Subscriber) -> None:
        sub.ws = self.ws
        self.ctx.hub.add(sub)
        self.metrics.watchers.inc()
        try:
            await sub.run(self.ctx.store, self.ws.send)
        except SlowSubscriber:
            logger.warning(
                "closing slow subscriber %s of %s at %d", self.peer, sub.commit, sub.next
            )
            await self.ws.close(1008, "subscriber too slow")
        except ServerError as exc:  # the experiment went away (pruned) or its file is unreadable
            logger.warning("watch of %s ended: %s", sub.commit, exc.message)
            await self.ws.close(1011, exc.message)
        finally:
            self.ctx.hub.remove(sub)
            self.metrics.watchers.dec()


def _wake(waiter: "asyncio.Future[None] | None") -> None:
    if waiter is not None and not waiter.done():  # done: cancelled with its waiting task
        waiter.set_result(None)


def _hum(req: Request, response: Response) -> bool:
    """Workers' steady traffic, an empty claim or a heartbeat: logged at debug, or 100 idle
    workers would write ten lines a second."""
    if isinstance(req, ClaimJob):
        return isinstance(response, Data) and response.payload == b"null"
    return isinstance(req, UpdateJob) and req.status == JobStatus.RUNNING


def _commit(req: Request) -> str:
    commit: bytes | None = getattr(req, "commit_id", None)
    return f" commit={commit.hex()}" if commit else ""
