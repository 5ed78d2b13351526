"""One WebSocket connection: a reader that accepts requests in order and a
writer that sends their final responses strictly in request order.

Metric logging is pipelined: the reader queues the records for group commit
and moves on; the writer awaits each completion in turn. Every other request
is a barrier: it runs once everything before it has been answered, so
requests on a connection are applied in order and reads see earlier writes.
The queue between the two is bounded (`max_inflight_requests`): beyond it the
reader stops reading and TCP pushes back.
"""

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from fetchml.protocol.enums import ErrorCode, Opcode
from fetchml.protocol.errors import ProtocolError
from fetchml.protocol.keys import key_hash
from fetchml.protocol.requests import (
    LogMetrics,
    Request,
    decode_request,
    record_tails,
)
from fetchml.protocol.responses import Error, Response, Success, encode_response

from .auth import Identity, KeyTable
from .dispatch import dispatch, rate_limited
from .errors import AuthenticationFailed, ServerError
from .handlers import Context, accept_log
from .http import Gate, Metrics, handshake_key
from .watch import SlowSubscriber, Subscriber

logger = logging.getLogger(__name__)

_END = object()


class _Pending:
    """A queued metric append: its future and how to answer once it is written."""

    __slots__ = ("future", "opcode", "records")

    def __init__(self, future: "asyncio.Future[int]", opcode: Opcode, records: int) -> None:
        self.future = future
        self.opcode = opcode
        self.records = records


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
            message = "" if records is None else str(records)
            packet = self._cache[key] = encode_response(Success(timestamp=now, message=message))
        return packet


ACKS = _Acks()


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
        self._queue: asyncio.Queue[Any] | None = None
        """Accepted requests on their way to the writer; made with the first message."""
        self._accepted = 0
        self._sent = 0
        self._shut: tuple[int, str] | None = None

    @property
    def accepted(self) -> int:
        """Requests accepted so far (applied or queued for group commit)."""
        return self._accepted

    @property
    def answered(self) -> int:
        return self._sent

    @property
    def queued(self) -> int:
        """Accepted requests whose final response is not sent yet, up to max_inflight_requests."""
        return self._queue.qsize() if self._queue else 0

    def stop(self) -> None:
        """Stop reading (graceful shutdown): answer what was accepted, then close 1001."""
        self.shut(1001, "server shutting down")

    def shut(self, code: int, reason: str) -> None:
        """Stop reading, answer what was accepted, then close with `code` (first call wins)."""
        if self._shut is None:
            self._shut = (code, reason)
        self._reading.cancel()

    def revoked(self, keys: KeyTable) -> str | None:
        """Why this connection may not stay open under `keys` (SIGHUP), if so."""
        if not keys.allows_peer(self.peer):
            return "address not allowed"
        if self.bound is None and keys.require_key:
            return "handshake key required"
        if self.bound is not None and keys.lookup(self.bound) is None:
            return "key revoked"
        if self.watching is not None:
            who = keys.lookup(self.watching[0])
            if who is None or not who.can("jobs:read"):
                return "key revoked"
        return None

    async def serve(self) -> None:
        first: bytes | str | None = None
        with self._reading, contextlib.suppress(ConnectionClosed):
            first = await self.ws.recv()  # an idle connection waits here and holds little else
        if first is not None:
            await self._serve(first)
        if self._shut:
            # Unread messages would hide the peer's close frame: discard them while closing.
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._discard)
                await self.ws.close(*self._shut)
                tg.cancel_scope.cancel()

    async def _serve(self, first: bytes | str) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(self.ctx.config.server.max_inflight_requests)
        self._queue = queue
        self._idle = asyncio.Event()
        self._room = asyncio.Event()
        self._writer_done = asyncio.Event()
        self._reading = anyio.CancelScope()  # a scope is entered once: a new one for this phase
        if self._shut:
            self._reading.cancel()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, tg, queue)
                close: tuple[int, str] | None = None
                with self._reading:
                    close = await self._reader(tg, queue, first)
                await queue.put(_END)
                await self._writer_done.wait()  # every accepted request answered first
                tg.cancel_scope.cancel()  # a watch pump, if any
                if close and not self._shut:
                    await self.ws.close(*close)
        except* ConnectionClosed:
            pass  # the peer went away: nothing left to answer

    async def _discard(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in self.ws:
                pass

    # -- reader --------------------------------------------------------------

    async def _reader(
        self, tg: anyio.abc.TaskGroup, queue: "asyncio.Queue[Any]", message: bytes | str
    ) -> tuple[int, str] | None:
        """Accept requests until the peer closes; returns the close code and reason when
        the peer broke the protocol (sent once earlier requests are answered)."""
        ws = self.ws
        while True:
            if isinstance(message, str):
                return (1003, "binary messages only")
            while queue.full():  # backpressure: apply nothing more until answers go out
                self._room.clear()
                await self._room.wait()
            item = self._accept(message)
            if isinstance(item, _Pending | bytes):
                self._accepted += 1
                queue.put_nowait(item)
            else:
                # A barrier: it runs once everything before it is answered; stop() waits for it.
                with anyio.CancelScope(shield=True):
                    await self._drain()
                    if self._writer_done.is_set():
                        return None
                    if isinstance(item, Subscriber):
                        await self._start_watch(item, tg)
                        break
                    packet = await self._run(item)
                    self._accepted += 1
                    queue.put_nowait(packet)
            if self._shut:  # recv() returns buffered messages without a chance to cancel it
                return None
            try:
                message = await ws.recv()
            except ConnectionClosedOK:
                return None
        # Watching: any further message is a protocol violation.
        async for _ in ws:
            return (1008, "no requests after WATCH_METRICS")
        return None

    def _accept(
        self, message: bytes
    ) -> "_Pending | bytes | Subscriber | tuple[Request, Identity, Coroutine[Any, Any, Response] | Response]":
        """Decode, authenticate, dispatch. Errors become ready ERROR packets."""
        opcode: Opcode | None = None
        try:
            fast = record_tails(message)
            if fast is not None:
                opcode = (
                    Opcode.LOG_METRIC if message[0] == Opcode.LOG_METRIC else Opcode.LOG_METRICS
                )
                self.metrics.requests[opcode.name] += 1
                key, commit, tails = fast
                who = self._identify(key)
                future = accept_log(self.ctx, who, commit.hex(), tails)
                return _Pending(future, opcode, len(tails))
            req = decode_request(message)
            opcode = req.OPCODE
            self.metrics.requests[opcode.name] += 1
            who = self._identify(req.key_hash)
            if rate_limited(req):
                self.ctx.limiter.check(who.user)
            outcome = dispatch(self.ctx, who, req)
            if isinstance(outcome, asyncio.Future):
                return _Pending(outcome, opcode, req.count if isinstance(req, LogMetrics) else 1)
            if isinstance(outcome, Subscriber):
                self.watching = (req.key_hash, outcome.commit)
                return outcome
            return (req, who, outcome)
        except (ProtocolError, ServerError) as exc:
            return self._error(opcode, exc)
        except Exception:
            logger.exception("internal error on %s from %s", opcode and opcode.name, self.peer)
            return self._error(opcode, None)

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

    async def _run(
        self, item: "bytes | tuple[Request, Identity, Coroutine[Any, Any, Response] | Response]"
    ) -> bytes:
        if isinstance(item, bytes):
            return item
        req, who, outcome = item
        started = time.perf_counter()
        try:
            response = outcome if not isinstance(outcome, Coroutine) else await outcome
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
        logger.info(
            "user=%s op=%s%s ok %.1fms",
            who.user,
            req.OPCODE.name,
            _commit(req),
            (time.perf_counter() - started) * 1000,
        )
        return encode_response(response)

    async def _drain(self) -> None:
        while self._sent < self._accepted and not self._writer_done.is_set():
            self._idle.clear()
            await self._idle.wait()

    async def _start_watch(self, sub: Subscriber, tg: anyio.abc.TaskGroup) -> None:
        await self.ws.send(ACKS.get(None))
        logger.info("watch %s from %d by %s", sub.commit, sub.next, self.peer)
        tg.start_soon(self._watch, sub)

    async def _watch(self, sub: Subscriber) -> None:
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

    # -- writer --------------------------------------------------------------

    async def _writer(self, tg: anyio.abc.TaskGroup, queue: "asyncio.Queue[Any]") -> None:
        send = self.ws.send
        try:
            while True:
                item = queue.get_nowait() if queue.qsize() else await queue.get()
                self._room.set()
                if item is _END:
                    return
                if isinstance(item, _Pending):
                    item = await self._complete(item)
                try:
                    await send(item)
                except ConnectionClosed:
                    tg.cancel_scope.cancel()
                    return
                self._sent += 1
                if self._sent == self._accepted:
                    self._idle.set()
        finally:
            self._writer_done.set()
            self._idle.set()

    async def _complete(self, pending: _Pending) -> bytes:
        try:
            await pending.future
        except ServerError as exc:
            return self._error(pending.opcode, exc)
        except Exception:
            logger.exception("internal error completing %s", pending.opcode.name)
            return self._error(pending.opcode, None)
        return ACKS.get(None if pending.opcode == Opcode.LOG_METRIC else pending.records)


def _commit(req: Request) -> str:
    commit: bytes | None = getattr(req, "commit_id", None)
    return f" commit={commit.hex()}" if commit else ""
