"""The MetricLogger's batcher, without sockets or threads: points in, LOG_METRICS_AT out.

The caller's thread checks each name once (`encode_name`, cached in `names`)
and every step (`check_step`), then queues each point as its four items (name,
value, step and the time of the log() call, encoding.WIDTH) at the end of one
flat list, and each FlushToken as four items too, named FLUSH. `drain` takes
them (`take`), encodes the points between tokens as their metrics.bin records, a
column at a time (`encode`, encoding.py), and puts them into batches (`add`),
cutting a Batch, one complete LOG_METRICS_AT message, at `batch_size` points or
before the next record would make it longer than `max_message_bytes`. A value
the wire cannot carry is rejected here. A caller catching up does the same in
three steps, taking a `claim` first, so that it encodes without holding the lock.

Every Batch stays in `unacked` until it is acknowledged or rejected (its
points are then counted in the ledger and never sent again); `resend_all`
puts every unacknowledged batch back in line, in order, for a new
connection. A FlushToken is done once every point queued before it is
settled, acknowledged or rejected. The I/O loop (shipper.py) sends what
`next_batch` gives and reports what the daemon answered.

Exactly once: `base` is the index in metrics.bin where the unacknowledged
window starts (the record count at start, plus every record acknowledged
since). After a reconnect, `reconcile` takes the records stored from `base`
on and skips the leading unacknowledged records they equal byte for byte
(a batch stored before its answer was lost, or a prefix of one); anything
else is another writer's, and the whole window is sent again.
"""

import contextlib
import operator
import threading
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.metrics import RECORD_HEAD, walk
from fetchml.protocol.requests import LOG_METRICS_HEAD, LogMetricsAt, log_metrics_at_head
from fetchml.protocol.rules import check_metric_name

from .encoding import WIDTH, Columns, Ends, Point, encode_points
from .errors import InvalidRequest
from .ledger import Ledger
from .models import MAX_STEP

MESSAGE_HEAD = LOG_METRICS_HEAD
"""LOG_METRICS_AT bytes before the records: opcode, key hash, commit, count."""
MAX_POINT = RECORD_HEAD.size + 255
"""The longest encoded point: a record with a 255-byte name."""
LAG = 10_000
"""Points that may wait in the queue before the caller's thread encodes them itself
(Shipper.catch_up): a caller logging faster than the worker gets the interpreter lock would
otherwise leave a backlog for close() to send. About 3 ms of a tight loop: enough to make
the encoding's fixed costs small, few enough to be encoded while still in the CPU's cache."""


class Done:
    """Set once, by the worker; waited for by the caller's thread. A held lock, released when
    set: waking the waiter is one release (a threading.Event takes a Condition, and a lock
    allocated per wait)."""

    __slots__ = ("_held", "_set")

    def __init__(self) -> None:
        self._set = False
        self._held = threading.Lock()
        self._held.acquire()

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._held.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Whether it is set, waiting at most `timeout` seconds for it."""
        if not self._set and self._held.acquire(timeout=timeout):
            self._held.release()
        return self._set


class FlushToken:
    """Queued by flush(); `done` is set once every point queued before it is settled."""

    __slots__ = ("after", "done")

    def __init__(self) -> None:
        self.done = Done()
        self.after = 0
        """The last batch cut before it: done once no batch up to this one is unsettled."""


FLUSH = "\x00"
"""The name a FlushToken is queued under (its value is the token): no metric name has 0x00."""


def queued(*entries: Point | FlushToken) -> list[Any]:
    """The queue items of points and flush tokens, in order (log() queues its point itself)."""
    items: list[Any] = []
    for entry in entries:
        items.extend((FLUSH, entry, None, 0.0) if isinstance(entry, FlushToken) else entry)
    return items


@dataclass(slots=True)
class Encoded:
    """Points taken from the queue, encoded (Batcher.encode), to be put into batches."""

    runs: list[tuple[bytes, Ends] | FlushToken]
    """The records of each run of points, with where each record ends, and the flush
    tokens between runs, in order."""
    rejects: list[tuple[str, str]]
    """The name of each point left out, and why (a value the wire cannot carry)."""


@dataclass(frozen=True, slots=True)
class Batch:
    seq: int
    count: int
    message: bytes
    """The whole LOG_METRICS_AT request, as sent (a resend costs nothing)."""

    @property
    def records(self) -> bytes:
        return self.message[MESSAGE_HEAD:]


def flushes(labels: list[str]) -> list[int]:
    """Where the flush tokens are among a run of queued names."""
    found: list[int] = []
    at = -1
    for _ in range(labels.count(FLUSH)):
        at = labels.index(FLUSH, at + 1)
        found.append(at)
    return found


def part(cols: Columns, start: int, stop: int) -> Columns:
    return cols[0][start:stop], cols[1][start:stop], cols[2][start:stop], cols[3][start:stop]


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


class Batcher:
    def __init__(
        self,
        queue: list[Any],
        ledger: Ledger,
        *,
        key_hash: bytes,
        commit: bytes,
        batch_size: int = 1000,
        max_message_bytes: int = 1 << 20,
        limit: int = 1 << 62,
    ) -> None:
        if not 1 <= batch_size <= LogMetricsAt.MAX_POINTS:
            raise InvalidRequest(f"batch_size must be 1..65535, got {batch_size}")
        if max_message_bytes < MESSAGE_HEAD + MAX_POINT:
            raise InvalidRequest(
                f"max_message_bytes must be at least {MESSAGE_HEAD + MAX_POINT}, "
                f"got {max_message_bytes}"
            )
        self.queue = queue
        self.ledger = ledger
        self.names: dict[str, tuple[bytes, int]] = {}
        """Names checked by the caller's thread, with their encoding and length."""
        self.held = 0
        """Points taken from the queue and not yet settled."""
        self.first = 0
        """Queue items taken and not yet deleted: the queue's first items are deleted only
        once no more are left behind them than were taken (`take`)."""
        self.limit = limit
        """At most this many points buffered (queued or held); -1 once the logger stopped."""
        self.lag = LAG
        """At most this many points wait in the queue before log() encodes them itself."""
        self.claim: Columns | None = None
        """Points a caller took to encode itself (`claim_all`); nothing else is taken from
        the queue until it adds them (`add_claim`)."""
        self.room = min(limit, self.lag) * WIDTH
        """How long the queue may grow: `first` items, then points of WIDTH items while
        fewer than `lag` wait and fewer than `limit` are buffered (log() compares it with
        the queue's length)."""
        self.unacked: dict[int, Batch] = {}
        """Batches cut and not yet settled, by sequence number (in order)."""
        self.ready: deque[int] = deque()
        """Sequence numbers of batches to send on the current connection, in order."""
        self.base: int | None = None
        """Where the unacknowledged window starts in metrics.bin (None: not known)."""
        self._key_hash, self._commit = key_hash, commit
        self._head = log_metrics_at_head(key_hash, commit, 1)[:-2]
        """A batch's message up to its count (two bytes, big-endian)."""
        self._size = batch_size
        self._budget = max_message_bytes - MESSAGE_HEAD
        self._tokens: deque[FlushToken] = deque()
        self._parts: list[bytes] = [b""]
        self._count = 0
        self._bytes = 0
        """The length of the batch's records so far."""
        self._seq = 0
        self.next_step: dict[str, int] = {}
        """Each name's step when logged without one (only whoever takes from the queue uses it)."""

    @property
    def waiting(self) -> int:
        """Points and flush tokens queued and not yet taken."""
        return (len(self.queue) - self.first) // WIDTH

    def queued_points(self) -> int:
        """Points queued and not yet taken."""
        labels = self.queue[self.first :: WIDTH]
        return len(labels) - labels.count(FLUSH)

    @property
    def full(self) -> bool:
        """`limit` points are buffered, or the logger stopped. `held` is read first: points
        the worker takes meanwhile are then counted once, not twice."""
        held = self.held
        return self.limit < 0 or self.waiting + held >= self.limit

    @property
    def idle(self) -> bool:
        return not self.waiting and not self._count and not self.unacked and self.claim is None

    def drain(self, slots: int, cut: bool) -> None:
        """Encode up to `slots` batches' worth of queued points (`slots * batch_size`, fewer
        batches than that only when cut short by size); `cut` the last partial one. Nothing
        is taken while a caller encodes its `claim`."""
        take = min(self.waiting, slots * self._size - self._count)
        if take > 0 and self.claim is None:
            self.add(self.encode(self.take(take)))
        if cut:
            self.cut()
        self._release_tokens()

    def take(self, count: int) -> Columns:
        """The columns of the next `count` points (or tokens) in the queue, counted in
        `held` at once (the caller's thread may append meanwhile, never remove). What was
        taken is deleted from the queue once what is left behind it is no longer: deleting
        the front of a list moves the rest, so a queue a million points long costs as much
        to drain as a short one."""
        first = self.first
        end = first + count * WIDTH
        queue = self.queue
        cols = (
            queue[first:end:WIDTH],
            queue[first + 1 : end : WIDTH],
            queue[first + 2 : end : WIDTH],
            queue[first + 3 : end : WIDTH],
        )
        held = self.held + count - cols[0].count(FLUSH)
        kept = 0 if 2 * end >= len(queue) else end
        room = self._room(held, kept)
        # No call from here on, so log() sees the queue, `held` and `room` change together.
        if not kept:
            del queue[:end]
        self.first, self.held, self.room = kept, held, room
        return cols

    def encode(self, cols: Columns) -> Encoded:
        """The records of points taken from the queue, a run between flush tokens at a
        time. It changes nothing but the default steps, which only whoever takes from the
        queue reads, so a caller encodes its claim without the lock."""
        runs: list[tuple[bytes, Ends] | FlushToken] = []
        rejects: list[tuple[str, str]] = []

        def reject(name: str, why: str) -> None:
            rejects.append((name, why))

        labels, total, first = cols[0], len(cols[0]), 0
        if FLUSH not in labels:
            return Encoded([encode_points(cols, self.names, self.next_step, reject)], rejects)
        for at in [*flushes(labels), total]:
            if at > first:
                run = part(cols, first, at) if at - first < total else cols
                runs.append(encode_points(run, self.names, self.next_step, reject))
            if at < total:
                runs.append(cols[1][at])
            first = at + 1
        return Encoded(runs, rejects)

    def claim_all(self) -> Columns | None:
        """Take every point waiting, to encode outside the lock (None: another caller is)."""
        if self.claim is not None:
            return None
        self.claim = self.take(self.waiting)
        return self.claim

    def add_claim(self, claim: Columns, encoded: Encoded) -> None:
        """Put a claim's points into batches (unless drop_all counted them meanwhile)."""
        if self.claim is claim:
            self.claim = None
            self.add(encoded)
            self._release_tokens()

    def add(self, encoded: Encoded) -> None:
        """Put encoded points into batches, in the order taken, cutting full ones."""
        for run in encoded.runs:
            if isinstance(run, FlushToken):
                self.cut()
                run.after = self._seq
                self._tokens.append(run)
            else:
                self._add_records(*run)
        for name, why in encoded.rejects:
            self.ledger.reject(1, f"metric {name!r} not sent: {why}", ErrorCode.INVALID_REQUEST)
        if encoded.rejects:
            self.held -= len(encoded.rejects)
            self._update_room()

    def _add_records(self, blob: bytes, ends: Ends) -> None:
        done, total = 0, len(ends)
        while done < total:
            offset = ends[done - 1] if done else 0
            fit = bisect_right(ends, offset + self._budget - self._bytes)
            upto = min(total, done + self._size - self._count, fit)
            if upto > done:
                stop = ends[upto - 1]
                self._parts.append(blob[offset:stop])
                self._bytes += stop - offset
                self._count += upto - done
                done = upto
            if done < total:
                self.cut()
        if self._count == self._size:
            self.cut()

    def cut(self) -> None:
        """Make the points encoded so far one batch."""
        if not self._count:
            return
        self._seq += 1
        parts = self._parts
        parts[0] = self._head + self._count.to_bytes(2, "big")
        self.unacked[self._seq] = Batch(self._seq, self._count, b"".join(parts))
        self.ready.append(self._seq)
        del parts[1:]
        self._count = self._bytes = 0

    def next_batch(self) -> Batch | None:
        """The next batch to send on this connection (None: nothing is waiting)."""
        while self.ready:
            batch = self.unacked.get(self.ready.popleft())
            if batch is not None:
                return batch
        return None

    def acknowledged(self, seq: int) -> None:
        """The daemon stored batch `seq`."""
        count = self.unacked[seq].count
        self.ledger.acknowledged += count  # counted before a token is done
        if self.base is not None:
            self.base += count
        self._settle(seq)

    @property
    def in_window(self) -> int:
        """Points cut into batches and not yet settled."""
        return sum(batch.count for batch in self.unacked.values())

    def reconcile(self, count: int, stored: bytes | None) -> bool:
        """After a reconnect: the experiment holds `count` records, `stored` the bytes of
        those from `base` on (None: more than the window holds, not read). Skip the
        leading unacknowledged records they equal (counted as acknowledged); False when
        they are not all this logger's (the window is then sent whole). Either way the
        window starts at `count` afterwards."""
        self.base = count
        if stored is None:
            return False
        if not stored:
            return True
        batches = list(self.unacked.values())
        window = b"".join(batch.records for batch in batches)
        if not window.startswith(stored):
            return False
        skip = len(stored)
        acknowledged = self.ledger.acknowledged
        for batch in batches:
            records = batch.records
            if skip >= len(records):
                skip -= len(records)
                self.acknowledged(batch.seq)
                self.base = count
                continue
            if skip:
                starts: list[int] = []
                walk(records, starts, end=skip)
                left = batch.count - len(starts)
                head = log_metrics_at_head(self._key_hash, self._commit, left)
                self.unacked[batch.seq] = Batch(batch.seq, left, head + records[skip:])
                self.ledger.acknowledged += len(starts)
                self.held -= len(starts)
                self._update_room()
            break
        self.ledger.recovered += self.ledger.acknowledged - acknowledged
        return True

    def rejected(self, seq: int, why: str, code: ErrorCode) -> None:
        """The daemon refused batch `seq` for good: its points are counted, never resent."""
        self.ledger.reject(self.unacked[seq].count, why, code)  # before a token is done
        self._settle(seq)

    def resend_all(self) -> None:
        """A new connection: every unacknowledged batch goes again, in order, before new ones."""
        self.ready = deque(self.unacked)
        self.ledger.resent_batches += len(self.ready)

    def stop(self) -> None:
        """No more points: every later log() takes its slow path (which raises)."""
        self.limit = self.room = -1

    def drop_all(self) -> int:
        """Stop, and forget every point not yet settled; how many there were."""
        self.stop()
        labels, values, _, _ = self.take(self.waiting)
        if self.claim is not None:
            labels, values = self.claim[0] + labels, self.claim[1] + values
            self.claim = None
        self._tokens.extend(
            value for name, value in zip(labels, values, strict=True) if name == FLUSH
        )
        del self._parts[1:]
        self.unacked.clear()
        self.ready.clear()
        lost, self.held, self._count, self._bytes = self.held, 0, 0, 0
        while self._tokens:
            self._tokens.popleft().done.set()
        return lost

    def _settle(self, seq: int) -> None:
        self.held -= self.unacked.pop(seq).count
        self._update_room()
        self._release_tokens()

    def _update_room(self) -> None:
        self.room = self._room(self.held, self.first)

    def _room(self, held: int, first: int) -> int:
        return -1 if self.limit < 0 else first + min(self.limit - held, self.lag) * WIDTH

    def _release_tokens(self) -> None:
        tokens = self._tokens
        if not tokens:
            return
        lowest = next(iter(self.unacked), None)
        while tokens and (lowest is None or tokens[0].after < lowest):
            tokens.popleft().done.set()
