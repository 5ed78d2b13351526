"""Responses ready together go out in one transport write.

websockets' `send` frames and writes one message at a time: a syscall and a drain per
response. `send_frames` lets websockets' sans-I/O protocol frame every packet, joins
the frames and hands them to the transport at once. On an open connection it does what
the connection's `send_context` does around such a write, without the context manager's
cost: frame, write, and wait while the transport's buffer is above its high-water mark,
so a peer that stops reading still pushes back and the buffer stays bounded. Any other
state goes through `send_context`, which raises ConnectionClosed.
"""

from collections.abc import Sequence

from websockets.asyncio.connection import Connection
from websockets.protocol import State


async def send_frames(ws: Connection, packets: Sequence[bytes]) -> None:
    """Send each packet as one binary message, all in one write; raises ConnectionClosed."""
    protocol = ws.protocol
    if protocol.state is State.OPEN and not ws.transport.is_closing():
        for packet in packets:
            protocol.send_binary(packet)
        ws.transport.write(b"".join(protocol.data_to_send()))
        if ws.paused:  # its exit waits for the buffer to drain, ConnectionClosed if it drops
            async with ws.send_context():
                pass
        return
    async with ws.send_context():  # not open: waits for the close, raises ConnectionClosed
        for packet in packets:
            protocol.send_binary(packet)
        ws.transport.write(b"".join(protocol.data_to_send()))
