"""MetricLogger's points on their way from the caller's queue to LOG_METRICS bodies.

The caller's thread checks each name once (`encode_name`, cached in `names`)
and every step (`check_step`), then appends `(name, value, step)` tuples and
flush markers to a deque. On the worker thread, `drain` pops them, assigns
default steps and encodes each point as its LOG_METRICS wire bytes
(protocol.requests.POINT and the cached name), cutting bodies of at most
`batch_size` points, so a resend costs nothing. A body stays in `unacked`
(by sequence number) until `settle`; a flush marker is set once every point
queued before it is settled. A value the wire cannot carry is rejected here.
"""

import contextlib
import operator
import struct
import threading
from collections import deque
from typing import Any

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.requests import POINT, check_metric_name

from .errors import InvalidRequest
from .ledger import Ledger
from .models import MAX_STEP


class FlushMarker:
    """Put in the queue by flush(); set once every point queued before it is settled."""

    __slots__ = ("done", "threshold")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.threshold = 0


def encode_name(name: object) -> tuple[bytes, int]:
    """A metric name's wire bytes and length; InvalidRequest if the daemon would refuse it."""
    if not isinstance(name, str):
        raise InvalidRequest(f"metric name must be a str, got {name!r}")
    try:
        raw = check_metric_name(name)
    except MalformedRequest as exc:
        raise InvalidRequest(f"invalid metric name {name!r}: {exc.message}") from None
    return raw, len(raw)


def check_step(step: object) -> int:
    """A step as the int the wire carries; InvalidRequest unless an integer 0..2**32 - 1."""
    if not isinstance(step, bool):
        with contextlib.suppress(TypeError):
            value = operator.index(step)  # type: ignore[arg-type]
            if 0 <= value <= MAX_STEP:
                return value
    raise InvalidRequest(f"step must be an integer 0..{MAX_STEP}, got {step!r}")


class Batches:
    def __init__(
        self, queue: "deque[Any]", batch_size: int, ledger: Ledger, limit: int = 1 << 62
    ) -> None:
        self.queue = queue
        self.names: dict[str, tuple[bytes, int]] = {}
        """Names checked by the caller's thread, with their encoding and length."""
        self.space = threading.Event()
        """Set whenever points leave the buffer (a blocked log() waits for it)."""
        self.held = 0
        """Points taken from the queue and not yet settled."""
        self.limit = limit
        """At most this many points buffered (queued or held); -1 once the logger stopped."""
        self.room = limit
        """`limit - held`: how long the queue may grow (log() compares it with the queue)."""
        self.unacked: dict[int, tuple[int, bytes]] = {}
        """Bodies cut and not yet settled, by sequence number: (point count, body)."""
        self.ready: deque[int] = deque()
        """Sequence numbers of bodies to send on the current connection, in order."""
        self._size = batch_size
        self._ledger = ledger
        self._markers: deque[FlushMarker] = deque()
        self._parts: list[bytes] = []
        self._count = 0
        self._seq = 0
        self._next_step: dict[str, int] = {}

    @property
    def idle(self) -> bool:
        return not self.queue and not self._count and not self.unacked

    def drain(self, slots: int, emit_partial: bool) -> None:
        """Encode queued points into at most `slots` more bodies (the in-flight budget).

        `held` goes up once the items have left the queue (the caller's bound may
        briefly undercount by one drain, never overcount).
        """
        size = self._size
        queue = self.queue
        take = min(len(queue), slots * size - self._count)
        if take > 0:
            not_points = 0
            parts = self._parts
            names = self.names
            next_step = self._next_step
            pack = POINT.pack
            popleft = queue.popleft
            for _ in range(take):
                item = popleft()
                if item.__class__ is not tuple:
                    not_points += 1
                    self.emit()
                    item.threshold = self._seq
                    self._markers.append(item)
                    continue
                name, value, step = item
                raw, length = names[name]
                if step is None:
                    step = next_step.get(name, 0)
                try:
                    parts.append(pack(step, value, length))
                except (struct.error, TypeError) as exc:
                    not_points += 1
                    why = f"metric {name!r} not sent: {exc}"
                    self._ledger.reject(1, why, ErrorCode.INVALID_REQUEST)
                    continue
                parts.append(raw)
                next_step[name] = step + 1
                self._count += 1
                if self._count >= size:
                    self.emit()
            self.held += take - not_points
            self.room = self.limit - self.held
        if emit_partial:
            self.emit()
        self._check_markers()

    def emit(self) -> None:
        """Cut the points encoded so far into a body."""
        if not self._count:
            return
        self._seq += 1
        self.unacked[self._seq] = (self._count, b"".join(self._parts))
        self.ready.append(self._seq)
        self._parts.clear()
        self._count = 0

    def settle(self, seq: int) -> None:
        """A body acknowledged or rejected: its points leave the buffer."""
        count, _ = self.unacked.pop(seq)
        self.held -= count
        self.room = self.limit - self.held
        self.space.set()
        self._check_markers()

    def stop(self) -> None:
        """No more points: every later log() takes its slow path (which raises)."""
        self.limit = self.room = -1

    def drop_all(self) -> int:
        """Stop, and forget every point not yet settled; how many there were."""
        self.stop()
        self._parts.clear()
        self.unacked.clear()
        self.ready.clear()
        lost, self.held, self._count = self.held, 0, 0
        while self.queue:
            item = self.queue.popleft()
            if item.__class__ is tuple:
                lost += 1
            else:
                self._markers.append(item)
        while self._markers:
            self._markers.popleft().done.set()
        self.space.set()
        return lost

    def _check_markers(self) -> None:
        markers = self._markers
        if not markers:
            return
        lowest = next(iter(self.unacked), None)
        while markers and (lowest is None or markers[0].threshold < lowest):
            markers.popleft().done.set()
