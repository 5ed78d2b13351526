"""The `watchers` load of scripts/bench_load.py: watchers that only receive, lean.

The watchers share the benchmark's two cores with the daemon they load, so they cost
as little as a Python client can: one thread, one epoll loop, non-blocking sockets
read with recv_into into one buffer per watcher. The handshake and the watchers' own
frames (WATCH_METRICS, pongs) go through websockets' sans-I/O client. Every byte of
every push is received; of each push only the frame header and the packet's head are
parsed, and it is checked: a DATA `metrics` packet whose record count is exactly its
`next` minus the last push's (the watch is unfiltered: no gap, no duplicate) and
whose records' bytes fit that many records. The records are not decoded (the bench
checks the experiment's count). A watcher closed as too slow resumes from its `next`.
"""

import os
import select
import socket
import struct
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench_records import Watchers
from websockets.client import ClientProtocol
from websockets.frames import Close
from websockets.http11 import Response
from websockets.uri import parse_uri

from fetchml.protocol.enums import PacketType
from fetchml.protocol.metrics import RECORD_MAX, RECORD_MIN
from fetchml.protocol.requests import WatchMetrics, encode_request

BUFFER_BYTES = 1 << 20
"""Each watcher's receive buffer: pushes are received into it and overwritten."""
PUSH_HEAD = struct.Struct(">BQ8s")
"""Packet type, timestamp, the data type (uvarint length and text)."""
DATA_TYPE = bytes((7,)) + b"metrics"
PAGE = struct.Struct(">QI")
HEAD_BYTES = PUSH_HEAD.size + 10 + PAGE.size
"""A push's head (to `count`) is within its first this many bytes."""
MIN_PUSH = PUSH_HEAD.size + 1 + PAGE.size
OP_BINARY, OP_CLOSE, OP_PING = 0x2, 0x8, 0x9
SLOW = "subscriber too slow"


class StreamEnded(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"watch stream ended: {code} {reason}")
        self.reason = reason


@dataclass
class Watcher:
    """One unfiltered watch: its socket, what is buffered of it, what it received."""

    url: str
    key: bytes
    commit: bytes
    next: int
    sock: socket.socket = field(init=False)
    protocol: ClientProtocol = field(init=False)
    buf: bytearray = field(default_factory=lambda: bytearray(BUFFER_BYTES))
    start: int = 0
    end: int = 0
    skipping: int = 0
    """Bytes of the current push still to receive."""
    receiving: int = 0
    """Records of the current push: counted once its last byte is received."""
    records: int = 0
    pushes: int = 0
    slow_closes: int = 0

    def open(self) -> None:
        """Connect and send WATCH_METRICS from `next`; its answer is checked by `receive`."""
        parts = urlsplit(self.url)
        sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        protocol = ClientProtocol(parse_uri(self.url), max_size=None)
        protocol.send_request(protocol.connect())
        answer = b""
        try:
            sock.sendall(b"".join(protocol.data_to_send()))
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                answer += chunk
            end = answer.index(b"\r\n\r\n") + 4
            protocol.receive_data(answer[:end])
            if protocol.handshake_exc is not None:
                raise ConnectionError(f"handshake failed: {protocol.handshake_exc}")
            assert isinstance(protocol.events_received()[0], Response)
            request = WatchMetrics(key_hash=self.key, commit_id=self.commit, from_index=self.next)
            protocol.send_binary(encode_request(request))
            sock.sendall(b"".join(protocol.data_to_send()))
            answered = self._answer(sock, bytearray(answer[end:]))
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock, self.protocol = sock, protocol
        self.buf[: len(answered)] = answered
        self.start, self.end, self.skipping = 0, len(answered), 0

    @staticmethod
    def _answer(sock: socket.socket, held: bytearray) -> bytes:
        """Read WATCH_METRICS's answer (one small frame): what came after it."""
        while len(held) < 2 or len(held) < 2 + (held[1] & 0x7F):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed before answering WATCH_METRICS")
            held += chunk
        length = held[1] & 0x7F
        if held[0] & 0x0F != OP_BINARY or length > 125 or held[2] != PacketType.SUCCESS:
            raise ConnectionError(f"WATCH_METRICS refused: {bytes(held[:200])!r}")
        return bytes(held[2 + length :])

    def receive(self) -> None:
        """Read what the socket holds now and check each push it completes."""
        if self.end == len(self.buf):
            self._compact()
        try:
            n = self.sock.recv_into(memoryview(self.buf)[self.end :])
        except BlockingIOError:
            return
        if not n:
            raise ConnectionError("watch connection closed without a close frame")
        self.end += n
        while self._frame():
            pass
        if self.start == self.end:
            self.start = self.end = 0

    def _compact(self) -> None:
        kept = self.end - self.start
        self.buf[:kept] = self.buf[self.start : self.end]
        self.start, self.end = 0, kept

    def _frame(self) -> bool:
        """Take one frame's head (and the bytes of a push being received); False when
        more bytes are needed."""
        held = self.end - self.start
        if self.skipping:
            taken = min(self.skipping, held)
            self.start += taken
            self.skipping -= taken
            if self.skipping:
                return False
            self.records += self.receiving
            self.pushes += 1
            return self.start < self.end
        if held < 2:
            return False
        at, buf = self.start, self.buf
        if not buf[at] & 0x80 or buf[at + 1] & 0x80:
            raise ValueError("the daemon sent a fragmented or masked frame")
        opcode, length, head = buf[at] & 0x0F, buf[at + 1] & 0x7F, 2
        if length >= 126:
            head = 4 if length == 126 else 10
            if held < head:
                return False
            length = int.from_bytes(buf[at + 2 : at + head])
        if opcode == OP_BINARY:
            if held < head + min(length, HEAD_BYTES):
                return False
            self._check(at + head, length)
            self.start += head
            self.skipping = length
            return True
        if held < head + length:
            return False
        payload = bytes(buf[at + head : at + head + length])
        self.start += head + length
        if opcode == OP_PING:
            self.protocol.send_pong(payload)
            self.sock.setblocking(True)
            self.sock.sendall(b"".join(self.protocol.data_to_send()))
            self.sock.setblocking(False)
            return True
        if opcode == OP_CLOSE:
            close = Close.parse(payload)
            raise StreamEnded(close.code, close.reason)
        raise ValueError(f"unexpected frame opcode {opcode}")

    def _check(self, at: int, length: int) -> None:
        """A push's head: a metrics page following the last one, with no gap."""
        buf = self.buf
        if length < MIN_PUSH:
            raise ValueError(f"a {length}-byte frame is no push")
        kind, _, data_type = PUSH_HEAD.unpack_from(buf, at)
        if kind != PacketType.DATA or data_type != DATA_TYPE:
            raise ValueError(f"not a metrics push: {bytes(buf[at : at + HEAD_BYTES])!r}")
        pos, size, shift = at + PUSH_HEAD.size, 0, 0
        while True:  # the payload's length, a uvarint
            byte = buf[pos]
            size |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not byte & 0x80:
                break
        pushed, count = PAGE.unpack_from(buf, pos)
        records = size - PAGE.size
        if pos - at + size != length:
            raise ValueError(f"a push's payload of {size} bytes in a {length}-byte frame")
        if pushed - self.next != count:
            raise ValueError(f"a push of {count} records from {self.next} to {pushed}")
        if not count * RECORD_MIN <= records <= count * RECORD_MAX:
            raise ValueError(f"a push of {count} records in {records} bytes")
        self.next = pushed
        self.receiving = count


def run_watchers(
    url: str, key: bytes, commit: bytes, count: int, from_index: int
) -> tuple[Watchers, list[str]]:
    """`count` watchers of `commit` from `from_index` until stdin closes (prints "ready"
    once every one is accepted); their totals and what failed."""
    watchers = [Watcher(url, key, commit, from_index) for _ in range(count)]
    failures: list[str] = []
    poller = select.epoll()
    by_fd: dict[int, Watcher] = {}
    for watcher in watchers:
        watcher.open()
        by_fd[watcher.sock.fileno()] = watcher
        poller.register(watcher.sock, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.EPOLLIN)
    print("ready", flush=True)
    while by_fd:
        for fd, _ in poller.poll():
            if fd == stdin:
                if not os.read(stdin, 4096):  # the bench closes our stdin when done
                    by_fd.clear()
                    break
                continue
            watcher = by_fd[fd]
            try:
                watcher.receive()
            except (StreamEnded, OSError, ValueError) as exc:
                poller.unregister(fd)
                del by_fd[fd]
                watcher.sock.close()
                if not isinstance(exc, StreamEnded) or exc.reason != SLOW:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                watcher.slow_closes += 1
                watcher.open()  # from the last push's `next`
                by_fd[watcher.sock.fileno()] = watcher
                poller.register(watcher.sock, select.EPOLLIN)
    for watcher in watchers:
        watcher.sock.close()
    poller.close()
    result = Watchers(
        watchers=len(watchers),
        records=sum(w.records for w in watchers),
        pushes=sum(w.pushes for w in watchers),
        slow_closes=sum(w.slow_closes for w in watchers),
    )
    return result, failures
