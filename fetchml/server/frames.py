"""Responses ready together go out in one transport write.

websockets' `send` frames and writes one message at a time: a syscall and a drain per
response. Here websockets' sans-I/O protocol frames every packet, and the frames are
joined and handed to the transport at once. On an open connection this does what the
connection's `send_context` does around such a write, without the context manager's
cost; `send_frames` then waits while the transport's buffer is above its high-water
mark, so a peer that stops reading still pushes back and the buffer stays bounded (one
batch past the mark at most). Any other state goes through `send_context`, which raises
ConnectionClosed.
"""

from collections.abc import Sequence, Sized

from websockets.asyncio.connection import Connection
from websockets.protocol import State


def writable(ws: Connection) -> bool:
    """Whether the connection is open and its buffer below the high-water mark."""
    return ws.protocol.state is State.OPEN and not ws.paused and not ws.transport.is_closing()


def write_frames(ws: Connection, packets: Sequence[bytes]) -> None:
    """Write each packet as one binary message, all in one write (`writable` first)."""
    protocol = ws.protocol
    for packet in packets:
        protocol.send_binary(packet)
    ws.transport.write(b"".join(protocol.data_to_send()))


async def send_frames(ws: Connection, packets: Sequence[bytes]) -> None:
    """Send each packet as one binary message, all in one write; raises ConnectionClosed."""
    if ws.paused:
        await _drain(ws)
    if writable(ws):
        write_frames(ws, packets)
    else:  # not open: waits for the close, raises ConnectionClosed
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
