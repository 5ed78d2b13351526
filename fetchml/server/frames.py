"""Responses ready together go out in one transport write.

websockets' `send` frames and writes one message at a time: a syscall and a drain per
response. `send_frames` lets websockets' sans-I/O protocol frame every packet, joins
the frames and hands them to the transport at once. It runs inside the connection's
`send_context`, as `send` does: that checks the connection is open and, on the way out,
waits while the transport's buffer is above its high-water mark, so a peer that stops
reading still pushes back and the buffer stays bounded.
"""

from collections.abc import Sequence

from websockets.asyncio.connection import Connection


async def send_frames(ws: Connection, packets: Sequence[bytes]) -> None:
    """Send each packet as one binary message, all in one write; raises ConnectionClosed."""
    async with ws.send_context():
        protocol = ws.protocol
        for packet in packets:
            protocol.send_binary(packet)
        ws.transport.write(b"".join(protocol.data_to_send()))
