"""The request pipeline under Client: one WebSocket, many requests in flight.

The daemon answers every request exactly once and in request order, so the
pipeline keeps a FIFO of futures: each request appends its future and writes
its frame with no await in between (`send_frames` in fetchml/frames.py:
requests submitted together go in one write), and each final response resolves
the oldest future in the transport's callback that read it (`take`, see
fetchml/frames.py: no task wakes between the answer and its caller); the reader
task gets only what `take` leaves. PROGRESS and LOG packets before a final
response go to the `on_event` callback. At most `max_in_flight` requests are
in flight. When the connection drops, every pending future fails with
ConnectionLost, and so does every later request.
"""

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fetchml.protocol import requests as rq
from fetchml.protocol.errors import MalformedRequest, MalformedResponse
from fetchml.protocol.responses import (
    Data,
    Error,
    Log,
    Progress,
    Response,
    Success,
    decode_response,
)

from ..frames import Taking, received, send_frames, writable, write_frames
from .errors import ConnectionLost, InvalidRequest, ProtocolViolation, error_from
from .settings import Settings
from .transport import EventHandler, handle_event, log_event
from .watch import MetricWatch

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_IN_FLIGHT = 1024
MAX_MESSAGE_BYTES = 1 << 20


class Pipeline:
    """Ordered request/response matching on one connection; Client adds the API."""

    def __init__(
        self,
        ws: ClientConnection,
        settings: Settings,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        on_event: EventHandler | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self._ws = ws
        self._settings = settings
        self._key = settings.key_hash
        self._max_message_bytes = max_message_bytes
        self._on_event = on_event or log_event
        self._open_timeout = open_timeout
        self._calls: deque[asyncio.Future[Response]] = deque()
        self._max_in_flight = max_in_flight
        self._room: asyncio.Future[None] | None = None
        """What requests waiting for room in flight wait on (None: none waits)."""
        self._lost: ConnectionLost | None = None
        self._fault: Exception | None = None
        """What a response's handler raised in `take`: the reader raises it."""
        self._watches: set[MetricWatch] = set()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        if isinstance(ws, Taking) and received(ws) is not None:
            ws.taker = self

    @property
    def url(self) -> str:
        return self._settings.url

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def closed(self) -> bool:
        return self._lost is not None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._calls)

    async def close(self) -> None:
        """Close the watches opened through this client, then the connection."""
        for watch in list(self._watches):
            await watch.aclose()
        await self._ws.close()
        await asyncio.shield(self._reader)

    def abort(self) -> None:
        """Drop the connection at once, with no closing handshake (a daemon that hangs)."""
        self._ws.transport.abort()

    async def wait_closed(self) -> None:
        """Return once the connection is gone (closed, dropped, or a protocol violation)."""
        await asyncio.shield(self._reader)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the pipeline ----------------------------------------------------------

    async def _read(self) -> None:
        """Read what `take` leaves: a message that came while another waited here, one
        it could not decode, a text message. Fails every request when the connection goes."""
        reason = "connection closed"
        try:
            async for message in self._ws:
                if self._fault is not None:
                    break
                if isinstance(message, str):
                    raise ProtocolViolation("server sent a text message")
                self._answer(decode_response(message))
        except ConnectionClosed as exc:
            reason = f"connection closed ({exc})"
        except (ProtocolViolation, MalformedResponse) as exc:
            reason = f"protocol violation: {exc}"
            logger.error("%s: %s; closing", self.url, reason)
            await self._ws.close(1002, "protocol violation")
        else:
            code, why = self._ws.close_code, self._ws.close_reason
            if code is not None:
                reason = f"connection closed ({code} {why})".replace(" )", ")")
        finally:
            if isinstance(self._ws, Taking):
                self._ws.taker = None
            self._fail_all(ConnectionLost(f"{self.url}: {reason}"))
        if self._fault is not None:
            raise self._fault

    def take(self, message: bytes) -> bool:
        """A response, answered in the transport's callback that read it (False: left
        to `_read`, which raises what is wrong with it; after a fault, dropped)."""
        if self._fault is not None:
            return True
        try:
            response = decode_response(message)
        except MalformedResponse:
            return False
        if not self._calls and not isinstance(response, Progress | Log):
            return False
        try:
            self._answer(response)
        except Exception as exc:  # a handler's fault ends the connection; the reader raises it
            self._fault = exc
            self._ws.transport.abort()
        return True

    def taken(self) -> None:
        pass

    def _answer(self, response: Response) -> None:
        """Hand a response to its request's future, or an event to `on_event`."""
        if isinstance(response, Progress | Log):
            self._event(response)
            return
        if not self._calls:
            raise ProtocolViolation(f"unsolicited {type(response).__name__} response")
        future = self._calls.popleft()
        self._freed()
        if not future.done():
            future.set_result(response)

    def _event(self, event: Progress | Log) -> None:
        handle_event(self._on_event, event)

    def _fail_all(self, exc: ConnectionLost) -> None:
        self._lost = exc
        self._freed()
        while self._calls:
            future = self._calls.popleft()
            if not future.done():
                future.set_exception(ConnectionLost(exc.message))
                future.exception()  # a cancelled caller must not leave it unretrieved

    def _lost_error(self) -> ConnectionLost:
        assert self._lost is not None
        return ConnectionLost(self._lost.message)

    async def _call(self, request: rq.Request) -> Response:
        """Send one request and await its final response; ERROR raises its FetchmlError."""
        return await self._roundtrip(encode(request))

    async def _roundtrip(self, message: bytes) -> Response:
        """Send one encoded request and await its final response."""
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        await self._submit([message], [future])
        return final(await future)

    async def _submit(
        self, messages: Sequence[bytes], futures: "Sequence[asyncio.Future[Response]]"
    ) -> None:
        """Send encoded requests, as many in one write as the in-flight bound allows; each
        final response resolves its future, in order. A request the connection was lost
        before sending fails its future with ConnectionLost. Returns once all are written."""
        sent = 0
        while sent < len(messages) and self._lost is None:
            taken = self._enlist(futures[sent:])
            if not taken:
                if self._room is None:
                    self._room = asyncio.get_running_loop().create_future()
                await asyncio.wait((self._room,))  # a cancelled waiter leaves it to the others
                continue
            chunk, sent = messages[sent : sent + taken], sent + taken
            with contextlib.suppress(ConnectionClosed):  # if it closed, the reader fails them
                await send_frames(self._ws, chunk)
        for future in futures[sent:]:
            future.set_exception(self._lost_error())
            future.exception()  # retrieved: a caller may already have gone

    def send_now(
        self, messages: Sequence[bytes], futures: "Sequence[asyncio.Future[Response]]"
    ) -> int:
        """Send at once, in one write, as many of the requests as there is room for in
        flight, when nothing waits for room and the connection takes a write without
        waiting; how many were sent (`_submit` takes the rest)."""
        if self._lost is not None or self._room is not None or not writable(self._ws):
            return 0
        taken = self._enlist(futures)
        if taken:
            write_frames(self._ws, messages[:taken])
        return taken

    def _enlist(self, futures: "Sequence[asyncio.Future[Response]]") -> int:
        """Queue as many of `futures` as there is room for in flight, first first; how many
        (their requests must then be written with no await in between)."""
        taken = max(0, min(len(futures), self._max_in_flight - len(self._calls)))
        self._calls.extend(futures[:taken])
        return taken

    def _freed(self) -> None:
        """Room in flight (an answer came, or the connection went): wake who waits for it."""
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    async def _data(self, request: rq.Request, data_type: str) -> bytes:
        return data_payload(await self._call(request), data_type)

    async def _json(self, request: rq.Request, data_type: str, parse: Callable[[Any], T]) -> T:
        return parse_json(await self._data(request, data_type), parse)

    async def _success(self, request: rq.Request | bytes) -> str:
        if isinstance(request, bytes):
            response = await self._roundtrip(request)
        else:
            response = await self._call(request)
        return success_message(response)


def encode(request: rq.Request) -> bytes:
    """A request's bytes; one the codec refuses raises InvalidRequest."""
    try:
        return rq.encode_request(request)
    except MalformedRequest as exc:
        raise InvalidRequest(exc.message) from None


def final(response: Response) -> Response:
    """A final response, or the FetchmlError of an ERROR."""
    if isinstance(response, Error):
        raise error_from(response.code, response.message, response.details)
    return response


def success_message(response: Response) -> str:
    """A SUCCESS's message; any other response is a ProtocolViolation."""
    if not isinstance(response, Success):
        raise ProtocolViolation(f"expected SUCCESS, got {describe_response(response)}")
    return response.message


def data_payload(response: Response, data_type: str) -> bytes:
    """A DATA `data_type`'s payload; any other response is a ProtocolViolation."""
    if not isinstance(response, Data) or response.data_type != data_type:
        raise ProtocolViolation(f"expected DATA {data_type!r}, got {describe_response(response)}")
    return response.payload


def describe_response(response: Response) -> str:
    if isinstance(response, Data):
        return f"DATA {response.data_type!r}"
    return type(response).__name__.upper()


def parse_json(payload: bytes, parse: Callable[[Any], T]) -> T:
    try:
        return parse(json.loads(payload))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolViolation(f"unexpected JSON payload: {exc!r}") from None
