"""SyncClient: the client for plain scripts, one blocking call at a time.

Every call writes its request with one `sendall` and reads the answer itself, in the
caller's thread: websockets' sans-I/O protocol over a plain socket, with no event loop
and no thread. Use it from one thread at a time. The request's binary frame is built
without websockets' Frame (frames.binary_frame), and what is read is cut into whole
frames here (`whole_frames`): a final binary one is taken as it is, any other frame is
handed, whole, to websockets' protocol (pings, a close, fragments); websockets' Frame
objects and its parser cost about 23 µs of a 160 µs round trip here.

Lost connections. A call whose connection goes before its answer comes (the daemon
died or closed it, or sent nothing for `timeout` seconds) raises ConnectionLost, and its
request may or may not have been applied, as with Client. The next call opens a new
connection, trying the URLs in order from the one last used; when none answers it raises
ConnectFailed, having sent nothing. A call made more than `idle_check_s` (1 s) after the
connection last read or wrote first reads what the socket holds, without waiting: it
answers the daemon's pings, and finds a connection the daemon closed meanwhile (killed,
restarted, or closing a connection that answered no ping: it pings one silent for
ping_interval_s, 20 s) before sending, so it reopens at once and nothing is lost or
sent twice. Within `idle_check_s` of the last exchange a call checks nothing first: a
daemon that died since makes it raise ConnectionLost.

Usage::

    with SyncClient.connect("ws://127.0.0.1:9103/ws", api_key=KEY) as c:
        c.log_metric(commit, "loss", 0.25, step=10)
        print(c.query_columns(commit, "loss").to_pandas())
"""

import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from fetchml.protocol import requests as rq
from fetchml.protocol.enums import PacketType
from fetchml.protocol.errors import MalformedResponse
from fetchml.protocol.metrics import acked_records
from fetchml.protocol.responses import HEADER, Log, Progress, Response, decode_response

from ..frames import binary_frame, whole_frames
from .columns import Columns
from .errors import ConnectFailed, ConnectionLost, FetchmlError, ProtocolViolation
from .metrics import ColumnQuery, log_metric_request, log_metrics_requests
from .models import WhoAmI
from .pipeline import (
    MAX_MESSAGE_BYTES,
    data_payload,
    encode,
    final,
    parse_json,
    success_message,
)
from .runs import Run, log_metrics_at_requests, update_run_request
from .settings import Settings, resolve_settings
from .transport import (
    USER_AGENT,
    EventHandler,
    handle_event,
    handshake_errors,
    handshake_headers,
    log_event,
    unreachable,
)

BUFFER_BYTES = 1 << 18
WINDOW = 256
"""Requests sent before their answers are read, at most (their answers fit any buffer)."""
CLOSE_TIMEOUT_S = 2.0
_BINARY, _TEXT, _CLOSE = Opcode.BINARY, Opcode.TEXT, Opcode.CLOSE
_DATA = (Opcode.BINARY, Opcode.CONT)
_EVENTS = (bytes((PacketType.PROGRESS,)), bytes((PacketType.LOG,)))
"""The first byte of the packets that come before a final response."""
_SUCCESS = PacketType.SUCCESS.value
_EMPTY_SUCCESS = HEADER.size + 1
"""The length of a SUCCESS with no message (a LOG_METRIC's ack)."""
_OPEN = State.OPEN
_FIN_BINARY = 0x80 | Opcode.BINARY.value
_LEN16, _LEN64 = struct.Struct("!H"), struct.Struct("!Q")
_TIMED_OUT = (TimeoutError, BlockingIOError)
"""What a read or write past the timeout raises (BlockingIOError: the kernel's timeout)."""


class SyncClient:
    """A blocking connection to the daemon; create it with `SyncClient.connect(...)`."""

    idle_check_s = 1.0
    """A call on a connection silent this long first reads what the socket holds."""

    def __init__(
        self,
        settings: Settings,
        open_timeout: float,
        timeout: float | None,
        handshake_key: bool,
        on_event: EventHandler | None,
        max_message_bytes: int,
    ) -> None:
        """Not connected yet: use `SyncClient.connect`."""
        self._settings = settings
        self._key = settings.key_hash
        self._headers = handshake_headers(settings.api_key if handshake_key else None)
        self._open_timeout = open_timeout
        self._timeout = timeout
        self._on_event = on_event or log_event
        self._max_message_bytes = max_message_bytes
        self._buffer = bytearray(BUFFER_BYTES)
        self._link: tuple[socket.socket, ClientProtocol] | None = None
        self._parts: list[bytes] = []
        self._tail = bytearray()
        """Bytes read after the last whole frame."""
        self._last = 0.0
        self._closed = False

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        api_key: str | None = None,
        *,
        config_path: Path | None = None,
        open_timeout: float = 10.0,
        timeout: float | None = 60.0,
        handshake_key: bool = True,
        on_event: EventHandler | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> "SyncClient":
        """A connected client. `url`, `api_key`, `handshake_key` and `on_event` are those of
        `Client.connect` (several comma-separated URLs are tried in order), and a failed
        handshake raises the same errors. `timeout`: a call that waits that many seconds
        for the daemon (to take a request, or for the next bytes of an answer) raises
        ConnectionLost and drops the connection; None waits forever."""
        settings = resolve_settings(url, api_key, config_path=config_path)
        client = cls(settings, open_timeout, timeout, handshake_key, on_event, max_message_bytes)
        client._open()
        return client

    @property
    def url(self) -> str:
        return self._settings.url

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (a lost connection is reopened by the next call)."""
        return self._closed

    def close(self) -> None:
        """Send a close frame, wait briefly for the daemon's, and close the socket."""
        self._closed = True
        link, self._link = self._link, None
        if link is None:
            return
        sock, protocol = link
        try:
            protocol.send_close(1000)
            sock.sendall(b"".join(protocol.data_to_send()))
            sock.settimeout(CLOSE_TIMEOUT_S)
            while sock.recv_into(self._buffer):
                pass
        except (OSError, InvalidState):  # gone, or closing already
            pass
        finally:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------

    def whoami(self) -> WhoAmI:
        payload = data_payload(self._call(encode(rq.WhoAmI(key_hash=self._key))), "whoami")
        return parse_json(payload, WhoAmI.from_json)

    def log_metric(self, commit: str | bytes, name: str, value: float, step: int = 0) -> None:
        """One LOG_METRIC, answered before this returns."""
        packet = self._exchange([log_metric_request(self._key, commit, name, value, step)])[0]
        if len(packet) != _EMPTY_SUCCESS or packet[0] != _SUCCESS or packet[-1]:  # not a plain ack
            success_message(self._decoded(packet))

    def log_metrics(self, commit: str | bytes, metrics: Iterable[tuple[str, float, int]]) -> int:
        """Log (name, value, step) triples in as many LOG_METRICS as needed; the number
        of records acknowledged. All are sent (and answered) before an error is raised."""
        requests = log_metrics_requests(self._key, commit, metrics, self._max_message_bytes)
        return self._acked(requests)

    def log_metrics_at(
        self, run: str | bytes, points: Iterable[tuple[float, str, float, int]]
    ) -> int:
        """Log (timestamp, name, value, step) points, each stored with its own timestamp
        (Unix seconds); the number of records acknowledged."""
        requests = log_metrics_at_requests(self._key, run, points, self._max_message_bytes)
        return self._acked(requests)

    def update_run(self, run: str | bytes, patch: Mapping[str, Any] | None = None) -> Run:
        """Apply a JSON merge patch to the run's document; the document after it."""
        response = self._call(encode(update_run_request(self._key, run, patch)))
        return parse_json(data_payload(response, "run"), Run.from_json)

    def query_columns(
        self,
        commit: str | bytes,
        name: str,
        *,
        start_step: int | None = None,
        end_step: int | None = None,
        max_points: int | None = None,
    ) -> Columns:
        """Every point of the metric `name` (steps `start_step`..`end_step`, inclusive) as
        numpy columns; with `max_points`, at most that many chosen by LTTB."""
        query = ColumnQuery.of(self._key, commit, name, start_step, end_step, max_points)
        pages = []
        while query.request is not None:
            page = query.take(data_payload(self._call(encode(query.request)), "metrics"))
            if page is not None:
                pages.append(page[1])
        return Columns.of(pages)

    def exchange(self, messages: Sequence[bytes]) -> list[bytes]:
        """Send whole requests and return their final responses, raw and in order (events go
        to `on_event`). Raises ConnectionLost or ConnectFailed like any call."""
        return self._exchange(messages)

    def _call(self, message: bytes) -> Response:
        return self._decoded(self._exchange([message])[0])

    def _acked(self, requests: list[tuple[bytes, int]]) -> int:
        if not requests:
            return 0
        packets = self._exchange([message for message, _ in requests])
        return sum(
            acked_records(success_message(self._decoded(packet)), count)
            for packet, (_, count) in zip(packets, requests, strict=True)
        )

    def _decoded(self, packet: bytes) -> Response:
        """A final response; ERROR raises its FetchmlError. One that does not decode drops
        the connection and raises ProtocolViolation."""
        try:
            response = decode_response(packet)
        except MalformedResponse as exc:
            self._drop()
            raise ProtocolViolation(exc.message) from None
        return final(response)

    # -- the connection --------------------------------------------------------

    def _exchange(self, messages: Sequence[bytes]) -> list[bytes]:
        """Send the requests, WINDOW at a time, and read their final responses, in order, as
        they came: decoding waits for the caller (a LOG_METRIC's plain ack needs none)."""
        sock, protocol = self._ready()
        answers: list[bytes] = []
        try:
            for start in range(0, len(messages), WINDOW):
                if self._link is None:  # the daemon closed it after answering the last window
                    raise ConnectionLost(f"{self.url}: connection closed")
                window = messages[start : start + WINDOW]
                if protocol.state is not _OPEN:
                    raise InvalidState(f"connection is {protocol.state.name}")
                sock.sendall(b"".join(map(binary_frame, window)))
                end = start + len(window)
                while len(answers) < end:
                    self._receive(sock, protocol, answers, end)
        except _TIMED_OUT:
            self._drop()
            raise ConnectionLost(f"{self.url}: no answer within {self._timeout:g} s") from None
        except FetchmlError:
            self._drop()
            raise
        except (OSError, InvalidState) as exc:
            self._drop()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConnectionLost(f"{self.url}: {reason}") from None
        except BaseException:  # an interrupt: the answer would go to the next call
            self._drop()
            raise
        self._last = time.monotonic()
        return answers

    def _receive(
        self, sock: socket.socket, protocol: ClientProtocol, answers: list[bytes], until: int
    ) -> None:
        """Read once: final responses go to `answers` (up to `until` of them), events to
        `on_event`; pings are answered."""
        received = sock.recv_into(self._buffer)
        if not received:
            raise ConnectionLost(f"{self.url}: connection closed")
        data = self._tail + self._buffer[:received] if self._tail else self._buffer[:received]
        spans, end = whole_frames(data)
        self._tail = data[end:]
        for start, head, stop in spans:
            if data[start] == _FIN_BINARY and data[start + 1] < 0x80 and not self._parts:
                self._take(bytes(data[start + head : stop]), answers, until)  # final, unmasked
            elif self._through_protocol(protocol, data[start:stop], answers, until):
                return
        pongs = protocol.data_to_send()
        if pongs:
            sock.sendall(b"".join(pongs))

    def _through_protocol(
        self, protocol: ClientProtocol, frame: bytearray, answers: list[bytes], until: int
    ) -> bool:
        """A frame other than a final binary one, parsed by websockets' protocol; True once
        the daemon's close came."""
        protocol.receive_data(bytes(frame))
        for event in cast("list[Frame]", protocol.events_received()):
            if event.opcode is _CLOSE:  # after what it answered: the next call reconnects
                if len(answers) < until:
                    raise ConnectionLost(
                        f"{self.url}: connection closed ({Close.parse(event.data)})"
                    )
                self._drop()
                return True
            message = event.data if event.opcode is _BINARY and event.fin else self._other(event)
            if message is not None:
                self._take(bytes(message), answers, until)
        return False

    def _take(self, data: bytes, answers: list[bytes], until: int) -> None:
        """A whole binary message: an event for `on_event`, or the next final response."""
        if data[:1] in _EVENTS:
            try:
                event = decode_response(data)
            except MalformedResponse as exc:
                raise ProtocolViolation(exc.message) from None
            handle_event(self._on_event, cast("Progress | Log", event))
        elif len(answers) < until:
            answers.append(data)
        else:
            raise ProtocolViolation(f"unsolicited response (packet type {data[:1].hex()})")

    def _other(self, frame: Frame) -> bytes | None:
        """A fragmented binary message once whole; None for a fragment or a control frame (the
        protocol answers pings). A text message raises."""
        if frame.opcode is _TEXT:
            raise ProtocolViolation("server sent a text message")
        if frame.opcode not in _DATA:
            return None
        self._parts.append(bytes(frame.data))
        if not frame.fin:
            return None
        data = b"".join(self._parts)
        self._parts.clear()
        return data

    def _ready(self) -> tuple[socket.socket, ClientProtocol]:
        """The connection, read first (without waiting) if it was idle; reopened if lost."""
        link = self._link
        if link is not None and time.monotonic() - self._last > self.idle_check_s:
            link = self._poll(*link)
        return link or self._open()

    def _poll(
        self, sock: socket.socket, protocol: ClientProtocol
    ) -> tuple[socket.socket, ClientProtocol] | None:
        """Take what the idle socket holds, reading only while it has something; None if the
        daemon closed it."""
        try:
            while self._link is not None and readable(sock):
                self._receive(sock, protocol, [], 0)
        except ProtocolViolation:
            self._drop()
            raise
        except (OSError, InvalidState):  # closed by the daemon (ConnectionLost) or reset
            self._drop()
        except BaseException:
            self._drop()
            raise
        return self._link

    def _drop(self) -> None:
        link, self._link = self._link, None
        self._parts.clear()
        self._tail = bytearray()
        if link is not None:
            link[0].close()

    def _open(self) -> tuple[socket.socket, ClientProtocol]:
        """Connect to the first of the URLs, from the current one, that answers."""
        if self._closed:
            raise ConnectionLost(f"{self.url}: client closed")
        failures: list[ConnectFailed] = []
        for url in self._settings.urls:
            try:
                self._link = link = self._handshake(url)
                break
            except ConnectFailed as exc:
                failures.append(exc)
        else:
            raise unreachable(failures)
        self._settings = self._settings.starting_at(url)
        self._last = time.monotonic()
        return link

    def _handshake(self, url: str) -> tuple[socket.socket, ClientProtocol]:
        with handshake_errors(url):
            uri = parse_uri(url)
            protocol = ClientProtocol(uri, max_size=None)
            request = protocol.connect()
            request.headers["User-Agent"] = USER_AGENT
            request.headers.update(self._headers or {})
            protocol.send_request(request)
            sock = socket.create_connection((uri.host, uri.port), self._open_timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if uri.secure:
                    context = ssl.create_default_context()
                    sock = context.wrap_socket(sock, server_hostname=uri.host)
                sock.sendall(b"".join(protocol.data_to_send()))
                while protocol.state is State.CONNECTING and protocol.handshake_exc is None:
                    received = sock.recv_into(self._buffer)
                    if not received:
                        raise ConnectionError("connection closed during the handshake")
                    protocol.receive_data(self._buffer[:received])
                if protocol.handshake_exc is not None:
                    raise protocol.handshake_exc
                protocol.events_received()  # the handshake response
                set_timeout(sock, self._timeout)
            except BaseException:
                sock.close()
                raise
        return sock, protocol


def readable(sock: socket.socket) -> bool:
    """Whether a read would not wait: bytes came, or TLS holds some already decrypted."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


def set_timeout(sock: socket.socket, timeout: float | None) -> None:
    """Make each recv and send on the blocking `sock` fail after `timeout` seconds (None:
    never). On Linux the kernel keeps a plain socket's timeout (SO_RCVTIMEO, SO_SNDTIMEO; a
    call that times out raises BlockingIOError): Python's own timeout polls before every recv
    and send. A TLS socket keeps Python's: the ssl module retries a read the kernel's timeout
    cut short."""
    if timeout is None or sys.platform != "linux" or isinstance(sock, ssl.SSLSocket):
        sock.settimeout(timeout)
        return
    sock.settimeout(None)
    micros = max(1, int(timeout * 1e6))
    value = struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
