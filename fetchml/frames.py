"""websockets I/O shared by the daemon and the client: frames out in one write, and
messages in without waking a task for each.

Out: websockets' `send` frames and writes one message at a time: a syscall and a drain
per message. `write_frames` frames every packet itself (a binary frame is a head of two
to ten bytes, and a client's is masked: websockets' Frame objects cost several µs a
message) and hands the frames to the transport at once; with permessage-deflate on,
websockets' sans-I/O protocol compresses and frames them. On an open connection this does what the
connection's `send_context` does around such a write, without the context manager's
cost; `send_frames` writes before it awaits anything (so requests whose futures were
queued just before go out in that order), then waits while the transport's buffer is
above its high-water mark, so a peer that stops reading still pushes back and the buffer
stays bounded (one batch past the mark at most). Any other state goes through
`send_context`, which raises ConnectionClosed.

In: websockets queues each message for a task's `recv`, and waking that task costs more
than most requests' own work. A `Taking` connection hands each whole binary message to its
`taker`, while one is set and nothing waits in the queue, in the transport's callback that
read it; `taken` follows once per read. A message the taker declines, and every other
frame, goes to `recv` as before, so order holds. Once websockets' parser waits between
frames, the connection cuts what it reads into whole frames itself and hands a final
binary one to the taker without websockets' parser (its generators cost about 9 µs of
the daemon's CPU per lone request); any other frame goes, whole, through websockets'
protocol. The client's connections also read into a buffer of their thread's
(`Buffered`).
"""

import asyncio
import os
import struct
import threading
from collections.abc import Sequence, Sized
from typing import Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, Side, State
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

_FIN_BINARY = 0x80 | Opcode.BINARY.value
_HEAD16, _HEAD64 = struct.Struct("!BBH"), struct.Struct("!BBQ")
_LEN16, _LEN64 = struct.Struct("!H"), struct.Struct("!Q")
_AT_EOF = StreamReader.at_eof.__code__
"""Where websockets' parser waits between frames."""


def writable(ws: Connection) -> bool:
    """Whether the connection is open and its buffer below the high-water mark."""
    return ws.protocol.state is State.OPEN and not ws.paused and not ws.transport.is_closing()


def write_frames(ws: Connection, packets: Sequence[bytes]) -> None:
    """Write each packet as one binary message, all in one write (`writable` first)."""
    protocol = ws.protocol
    if protocol.extensions:  # permessage-deflate: websockets compresses and frames them
        for packet in packets:
            protocol.send_binary(packet)
        ws.transport.write(b"".join(protocol.data_to_send()))
        return
    frame = binary_frame if protocol.side is Side.CLIENT else plain_binary_frame
    ws.transport.write(b"".join([*protocol.data_to_send(), *map(frame, packets)]))


def at_frame_start(protocol: WebSocketProtocol) -> bool:
    """Whether websockets' parser waits for the first byte of a frame, holding nothing."""
    parser = protocol.parser
    while (inner := getattr(parser, "gi_yieldfrom", None)) is not None:
        parser = inner
    return getattr(parser, "gi_code", None) is _AT_EOF and not protocol.reader.buffer


def whole_frames(data: bytes | bytearray) -> tuple[list[tuple[int, int, int]], int]:
    """The whole frames at the start of `data`, each as (start, head length with the mask,
    end), and where the first one not all there starts."""
    spans = []
    at, end = 0, len(data)
    while end - at >= 2:
        length, head = data[at + 1] & 0x7F, 2
        if length == 126:
            if end - at < 4:
                break
            length, head = _LEN16.unpack_from(data, at + 2)[0], 4
        elif length == 127:
            if end - at < 10:
                break
            length, head = _LEN64.unpack_from(data, at + 2)[0], 10
        if data[at + 1] & 0x80:
            head += 4
        stop = at + head + length
        if stop > end:
            break
        spans.append((at, head, stop))
        at = stop
    return spans, at


def binary_frame(data: bytes) -> bytes:
    """`data` as one final binary frame from a client (masked), as websockets' protocol
    writes it with no extension, without a Frame object."""
    mask = os.urandom(4)
    return _head(data, 0x80) + mask + apply_mask(data, mask)


def plain_binary_frame(data: bytes) -> bytes:
    """`data` as one final binary frame from a server (not masked)."""
    return _head(data, 0) + data


def _head(data: bytes, masked: int) -> bytes:
    length = len(data)
    if length < 126:
        return bytes((_FIN_BINARY, masked | length))
    if length < 65536:
        return _HEAD16.pack(_FIN_BINARY, masked | 126, length)
    return _HEAD64.pack(_FIN_BINARY, masked | 127, length)


async def send_frames(ws: Connection, packets: Sequence[bytes]) -> None:
    """Send each packet as one binary message, all in one write made before anything is
    awaited, then wait while the buffer is above its mark; raises ConnectionClosed."""
    if writable(ws):
        write_frames(ws, packets)
    else:  # paused: written, then drained; not open: ConnectionClosed once it closes
        async with ws.send_context():
            write_frames(ws, packets)
    if ws.paused:
        await _drain(ws)


async def _drain(ws: Connection) -> None:
    """Wait for the buffer to drain below the low-water mark; ConnectionClosed if it drops."""
    async with ws.send_context():
        pass


def received(ws: Connection) -> Sized | None:
    """The frames received and not read yet (websockets' queue, empty when `recv` would
    wait); None when websockets does not expose it."""
    frames = getattr(getattr(ws, "recv_messages", None), "frames", None)
    return frames if isinstance(frames, Sized) else None


class Taker(Protocol):
    def take(self, message: bytes) -> bool:
        """Take a whole binary message in the transport's callback; False: leave it to recv."""

    def taken(self) -> None:
        """Called once after the messages of one read were taken."""


class Taking(Connection):
    """A connection whose binary messages go to `taker` (see the module's docstring): set
    one only when `received` sees websockets' queue.

    What it reads is cut into whole frames here (`whole_frames`) once websockets' parser
    waits at a frame's start: a final binary frame goes to the taker as it is (unmasked
    with websockets' own `apply_mask`), and every other frame, or one the taker declines,
    goes whole through websockets' protocol, which then never holds part of a frame."""

    taker: Taker | None = None
    _took: Taker | None = None
    _tail: bytes = b""
    """Bytes read after the last whole frame."""

    def data_received(self, data: bytes) -> None:
        try:
            if self._tail or at_frame_start(self.protocol):
                self._frames(self._tail + data if self._tail else data)
            else:
                super().data_received(data)
        finally:  # whatever happened, the taker finishes what it took in
            took = self._took
            if took is not None:
                self._took = None
                took.taken()

    def _frames(self, data: bytes) -> None:
        spans, end = whole_frames(data)
        self._tail = data[end:]
        protocol = self.protocol
        masked = 0x80 if protocol.side is Side.SERVER else 0
        most = protocol.max_message_size
        for start, head, stop in spans:
            taker = self.taker
            if (
                taker is not None
                and data[start] == _FIN_BINARY
                and data[start + 1] & 0x80 == masked
                and protocol.state is State.OPEN
                and protocol.current_size is None
                and (most is None or stop - start - head <= most)
                and not self.recv_messages.frames
            ):
                payload = data[start + head : stop]
                if masked:
                    payload = apply_mask(payload, data[start + head - 4 : start + head])
                if taker.take(payload):
                    self._took = taker
                    continue
            super().data_received(data[start:stop])

    def process_event(self, event: Event) -> None:
        taker = self.taker
        if (
            taker is not None
            and isinstance(event, Frame)
            and event.opcode is Opcode.BINARY
            and event.fin
            and not self.recv_messages.frames
        ):
            data = event.data
            if taker.take(data if type(data) is bytes else bytes(data)):
                self._took = taker
                return
        super().process_event(event)


class TakingServerConnection(Taking, ServerConnection):
    pass


READ_BYTES = 256 * 1024
"""What one read takes at most (asyncio's own size for a plain protocol's reads)."""

_buffer = threading.local()
"""Each thread's read buffer: a read is copied out of it before its callback returns."""


class Buffered(Connection, asyncio.BufferedProtocol):
    """A connection that reads into its thread's buffer and hands `data_received` a copy
    of what came. A plain protocol gets a fresh READ_BYTES object for every read, which
    glibc maps and unmaps each time (page faults on every read) until the process frees
    a larger block: a client's first connection paid that on every answer. The daemon
    reads the plain way: long-lived, it measured no such faults."""

    def get_buffer(self, sizehint: int) -> memoryview:
        view: memoryview | None = getattr(_buffer, "view", None)
        if view is None:
            view = _buffer.view = memoryview(bytearray(READ_BYTES))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_buffer.view[:nbytes].tobytes())


class TakingClientConnection(Buffered, Taking, ClientConnection):
    pass
