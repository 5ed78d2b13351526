"""Records of a metrics.bin buffer found and checked with numpy, for the first pass over a
big file (indexer.py): the same answers as protocol.metrics.walk and scan, without a
Python step per record.

Finding records: the buffer is cut into lanes of LANE bytes and every lane follows the
length bytes at once, one numpy step per record of a lane. Lane 0 starts at a record;
the others start anywhere and (almost always) fall into step with the records within a
few of them. Each lane walks OVERLAP bytes into the next one, and where its walk meets a
position of the next lane's walk, the next lane is on the records from there (both
follow the same lengths). That is checked for every lane, so the result is exact; when a
lane does not meet the next one, the buffer is walked in Python instead.

The common case comes first (`periodic`): an experiment's records usually repeat a few
names in a fixed order, so the buffer is whole cycles of one layout. The layout is read
from its first records, and every cycle is checked against it at once (each record's
length byte and name, and its timestamp): when all match, those are the records, all
valid, with no search at all.

Records of a few names in any order come next (`_chained`): every offset where four zero
bytes start (the high half of a plausible timestamp) is a candidate, and when the candidates
that pass the head checks and follow one another cover the buffer from offset 0, they are
its records, with no walk at all.
"""

from array import array
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from fetchml.protocol.enums import Opcode
from fetchml.protocol.keys import KEY_HASH_SIZE
from fetchml.protocol.metrics import MAX_TIMESTAMP, MIN_TIMESTAMP, RECORD_MIN, walk
from fetchml.protocol.requests import LOG_METRICS_HEAD

LANE = 4096
OVERLAP = 1024
SEEK = 128
_PAD = 512
_SAMPLE = 4096
HOPS = 3
HEAD = np.dtype([("ts", ">u8"), ("step", ">u4"), ("value", ">f8"), ("len", "u1")])
_WIDE = 64
"""Names longer than this are grouped in Python."""
_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93] * 2,
    dtype=np.uint64,
)

_KEY_END = 1 + KEY_HASH_SIZE
_LONGEST = RECORD_MIN + 255
"""Bytes of the longest record."""
_ROUNDS = 3
"""Times `_chained` drops candidates before it gives up."""

_KEEP = np.array(
    [[(1 << 8 * min(max(n - 8 * k, 0), 8)) - 1 for n in range(256)] for k in range(_WIDE // 8)],
    dtype=np.uint64,
)
"""_KEEP[k][n]: the bytes of a word k (bytes 8k..8k+7) inside a name of n bytes."""

MAX_PERIOD = 64
"""The longest cycle `periodic` looks for, in records."""

I64 = npt.NDArray[np.int64]


class Buffer:
    """Bytes of metrics.bin starting at a record, with zeros after them to read past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.u8 = np.frombuffer(data + bytes(_PAD), np.uint8)
        self.words = self.at_every_offset("<u8")
        """The 8 bytes at each offset as one word (its first byte the lowest)."""

    def at_every_offset(self, dtype: str) -> npt.NDArray[Any]:
        """A `dtype` value starting at each offset (zeros past the end)."""
        count = len(self.u8) - np.dtype(dtype).itemsize + 1
        return np.ndarray((count,), dtype, self.u8, strides=(1,))

    def rows(self, at: I64, width: int) -> npt.NDArray[np.uint8]:
        """The `width` bytes at each offset of `at` (zeros past the end), one row each."""
        window = as_strided(self.u8, shape=(self.size + 1, width), strides=(1, 1), writeable=False)
        return window[np.minimum(at, self.size)]


class Cycles(NamedTuple):
    """A buffer's first `len(table) * size` bytes: records repeating one layout, every one
    valid on its own (a plausible timestamp, a name of 1..255 bytes without 0x00)."""

    table: npt.NDArray[np.void]
    """One row a cycle: the j-th record's head as fields ts<j>, step<j>, value<j>."""
    names: list[bytes]
    """The j-th record's name, for each record of a cycle."""
    offsets: list[int]
    """The j-th record's offset in a cycle."""
    size: int
    """Bytes of one cycle."""


def periodic(data: bytes) -> Cycles | None:
    """The buffer's whole cycles when the layout of its first records (their names, in a
    cycle of up to MAX_PERIOD records) repeats in every one of them and every record is
    valid on its own; None when not, or when no cycle shows in its first records."""
    names: list[bytes] = []
    offsets: list[int] = []
    pos, size = 0, len(data)
    while len(names) < 2 * MAX_PERIOD and pos + RECORD_MIN <= size:
        stop = pos + RECORD_MIN + data[pos + RECORD_MIN - 1]
        if stop > size:
            break
        names.append(data[pos + RECORD_MIN : stop])
        offsets.append(pos)
        pos = stop
    period = next((p for p in range(1, len(names) // 2 + 1) if names[p:] == names[:-p]), 0)
    names = names[:period]
    if not period or not all(name and 0 not in name for name in names):
        return None
    cycle = offsets[period]
    count = size // cycle
    fields = [(f"{f}{j}", t, at + o) for j, at in enumerate(offsets[:period]) for f, t, o in _HEAD]
    layout = np.dtype(
        {
            "names": [f for f, _, _ in fields],
            "formats": [t for _, t, _ in fields],
            "offsets": [o for _, _, o in fields],
            "itemsize": cycle,
        }
    )
    table = np.frombuffer(data, layout, count=count)
    u8 = np.frombuffer(data, np.uint8, count=count * cycle).reshape(count, cycle)
    for j, (at, name) in enumerate(zip(offsets, names, strict=False)):
        expected = np.frombuffer(bytes([len(name)]) + name, np.uint8)
        length_at = at + RECORD_MIN - 1
        ts = table[f"ts{j}"]
        if not (
            (u8[:, length_at : length_at + len(expected)] == expected).all()
            and ((ts >= MIN_TIMESTAMP) & (ts < MAX_TIMESTAMP)).all()
        ):
            return None
    return Cycles(table, names, offsets[:period], cycle)


_HEAD = (("ts", ">u8", 0), ("step", ">u4", 8), ("value", ">f8", 12))

REPEATING_AT_MIN = 256
"""LOG_METRICS_AT of fewer records are taken apart in Python (records_at)."""
_AT_HEAD = LOG_METRICS_HEAD
"""Bytes of a LOG_METRICS_AT before its records (laid out as a LOG_METRICS)."""


def repeating_at(message: bytes) -> tuple[bytes, bytes, bytes, int, int] | None:
    """protocol.metrics.records_at's answer for a LOG_METRICS_AT of at least REPEATING_AT_MIN
    records whose names repeat one layout (`periodic`: a batch of one metric, or of a few
    logged in a fixed order), found with numpy; None for any other message, valid or not
    (records_at then decides)."""
    if len(message) <= _AT_HEAD or message[0] != Opcode.LOG_METRICS_AT:
        return None
    count = int.from_bytes(message[_AT_HEAD - 2 : _AT_HEAD])
    if count < REPEATING_AT_MIN:
        return None
    records = message[_AT_HEAD:]
    cycles = periodic(records)
    if (
        cycles is None
        or len(cycles.table) * cycles.size != len(records)
        or len(cycles.table) * len(cycles.names) != count
    ):
        return None
    try:
        for name in cycles.names:
            name.decode()
    except UnicodeDecodeError:
        return None
    latest = max(int(cycles.table[f"ts{j}"].max()) for j in range(len(cycles.names)))
    return message[1:_KEY_END], message[_KEY_END : _AT_HEAD - 2], records, count, latest


def find_starts(buf: Buffer) -> tuple[I64, int]:
    """(the start of every whole record of the buffer; the offset after the last one):
    what protocol.metrics.walk gives."""
    chained = _chained(buf)
    if chained is not None:
        return chained
    size = buf.size
    lanes = size // LANE
    if lanes < 2:
        return _walk(buf.data)
    u8 = buf.u8
    begin = np.arange(lanes, dtype=np.int64) * LANE
    limit = np.minimum(begin + LANE + OVERLAP, size)
    limit[-1] = size
    pos = _landing(buf, begin)
    active = np.ones(lanes, dtype=bool)
    steps = []
    while active.any():
        length = u8[pos + RECORD_MIN - 1]
        after = pos + RECORD_MIN + length
        whole = active & (pos + RECORD_MIN <= size) & (after <= size)
        steps.append(np.where(whole, pos, -1))
        pos = np.where(whole, after, pos)
        active = whole & (pos < limit)
    walked = np.stack(steps)  # walked[i, j]: lane j's i-th record, -1 past its end
    # Where lane j meets lane j + 1: the first of its records at or past lane j + 1's
    # start that lane j + 1 also reached.
    key = np.arange(lanes, dtype=np.int64) << 32
    theirs = (walked + key)[:, 1:].T[(walked >= 0)[:, 1:].T]
    mine = walked[:, :-1]
    probe = np.where(mine >= begin[1:], mine + key[1:], -1)
    at = np.minimum(np.searchsorted(theirs, probe), len(theirs) - 1)
    meets = (probe >= 0) & (theirs[at] == probe)
    if not meets.any(axis=0).all():
        return _walk(buf.data)
    first = meets.argmax(axis=0)
    meet = mine[first, np.arange(lanes - 1)]
    low = np.concatenate(([0], meet))
    high = np.concatenate((meet, [size + 1]))
    keep = (walked >= low) & (walked < high)
    return walked.T[keep.T], int(pos[-1])


def _chained(buf: Buffer) -> tuple[I64, int] | None:
    """find_starts' answer when the buffer's records all have a plausible timestamp and a
    non-empty name, found without a walk; None when that is not shown.

    Candidates: the offsets where four zero bytes start, a plausible timestamp and a whole
    record with a non-empty name. Those that no candidate leads to (bar 0), or that lead
    to neither a candidate nor near the end, are dropped until the rest form a chain: they
    start at 0, each one ends where the next one starts and no whole record follows the
    last. Then they are exactly the records a walk from 0 finds."""
    size = buf.size
    zero = buf.u8[: size + 3] == 0
    at = np.flatnonzero(zero[:-3] & zero[1:-2] & zero[2:-1] & zero[3:])
    length = buf.u8[at + RECORD_MIN - 1]
    after = at + RECORD_MIN + length
    keep = (buf.at_every_offset(">u8")[at] >= MIN_TIMESTAMP) & (length > 0) & (after <= size)
    at, after = at[keep], after[keep]
    for drop in range(_ROUNDS + 1):
        if drop:
            mark = np.zeros(size + 1, dtype=np.uint8)
            mark[at] = 1
            mark[after] |= 2
            mark[0] |= 2
            keep = (mark[at] >= 2) & ((mark[after] & 1 == 1) | (after > size - _LONGEST))
            at, after = at[keep], after[keep]
        if len(at) and at[0] == 0 and (at[1:] == after[:-1]).all():
            stop = int(after[-1])
            if stop + RECORD_MIN <= size and stop + RECORD_MIN + buf.data[stop + 20] <= size:
                return None  # a whole record follows the last: not a candidate
            return at, stop
    return None


def _plausible(buf: Buffer, at: I64) -> npt.NDArray[np.bool_]:
    """A whole record head could start at `at`: its timestamp is plausible."""
    ts = buf.rows(at, 8).view(">u8")[:, 0]
    return (at + RECORD_MIN <= buf.size) & (ts >= MIN_TIMESTAMP) & (ts < MAX_TIMESTAMP)


def _landing(buf: Buffer, begin: I64) -> I64:
    """Where each lane starts walking: the first offset in its first SEEK bytes from which
    HOPS records in a row have plausible timestamps and non-empty names (lane 0: 0);
    its own start when there is none."""
    at = (begin[1:, None] + np.arange(SEEK)).reshape(-1)
    lane = np.repeat(np.arange(1, len(begin)), SEEK)
    keep = _plausible(buf, at)
    at, lane = at[keep], lane[keep]
    pos = at
    for _ in range(HOPS):
        length = buf.u8[np.minimum(pos + RECORD_MIN - 1, buf.size)]
        pos = pos + RECORD_MIN + length
        keep = (length > 0) & _plausible(buf, pos)
        at, lane, pos = at[keep], lane[keep], pos[keep]
    start = begin.copy()
    found, first = np.unique(lane, return_index=True)
    start[found] = at[first]
    return start


def _walk(buf: bytes) -> tuple[I64, int]:
    starts: array[int] = array("q")
    stop = walk(buf, starts)
    return np.frombuffer(starts, np.int64), stop


class Parsed(NamedTuple):
    group: npt.NDArray[np.intp]
    """Each record's name, as its position in `names`."""
    names: list[bytes]
    """In order of first appearance."""
    plain: bool
    """Every record valid on its own (timestamp, a name of 1..255 bytes without 0x00)."""


def parse(buf: Buffer, starts: I64) -> Parsed:
    """The records of the buffer at `starts` (whole ones: find_starts), grouped by name."""
    lens = buf.u8[starts + RECORD_MIN - 1]
    ts = buf.at_every_offset(">u8")[starts]
    plain = bool(((ts >= MIN_TIMESTAMP) & (ts < MAX_TIMESTAMP) & (lens > 0)).all())
    width = max(8, -(-int(lens.max(initial=0)) // 8) * 8)
    grouped = _group(buf, starts, lens, width) if len(starts) and width <= _WIDE else None
    group, names = grouped or _group_python(buf.data, starts, lens)
    clean = not any(b"\0" in name for name in names)
    return Parsed(group, names, plain and clean)


def _group(
    buf: Buffer, starts: I64, lens: npt.NDArray[np.uint8], width: int
) -> tuple[npt.NDArray[np.intp], list[bytes]] | None:
    """Each record's name by a hash of its bytes (a word of 8 at a time), every record's
    bytes then compared with those of the first record of its hash; None when two names
    share a hash (rare)."""
    words = [  # each name's bytes 8k..8k+7 as one word, zeros past its end
        buf.words[starts + (RECORD_MIN + 8 * k)] & _KEEP[k][lens] for k in range(width // 8)
    ]
    hashes = lens.astype(np.uint64)
    for word, mix in zip(words, _MIX, strict=False):
        hashes += word * mix
    known = np.unique(hashes[:_SAMPLE])  # most buffers hold no name their start lacks
    inverse = _positions(known, hashes)
    if not (known[inverse] == hashes).all():
        known, inverse = np.unique(hashes, return_inverse=True)
        inverse = inverse.reshape(-1)
    first = np.full(len(known), len(hashes))
    np.minimum.at(first, inverse, np.arange(len(hashes)))
    same = first[inverse]
    if not all((w == w[same]).all() for w in [lens, *words]):
        return None
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    at = (starts[first[order]] + RECORD_MIN).tolist()
    data = buf.data
    return rank[inverse], [data[a : a + data[a - 1]] for a in at]


def _positions(known: npt.NDArray[np.uint64], hashes: npt.NDArray[np.uint64]) -> I64:
    """Each hash's position in `known` (sorted, distinct) where it is there, else any: by
    a table of the hashes' top bits when they tell the known ones apart."""
    for bits in range(len(known).bit_length() + 1, 17):
        shift = np.uint64(64 - bits)
        top = known >> shift
        if len(np.unique(top)) == len(known):
            table = np.zeros(1 << bits, dtype=np.int64)
            table[top] = np.arange(len(known))
            found: I64 = table[hashes >> shift]
            return found
    inverse = np.searchsorted(known, hashes)
    inverse[inverse == len(known)] = 0
    return inverse


def _group_python(
    buf: bytes, starts: I64, lens: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.intp], list[bytes]]:
    ids: dict[bytes, int] = {}
    which = [
        ids.setdefault(buf[a + RECORD_MIN : a + RECORD_MIN + n], len(ids))
        for a, n in zip(starts.tolist(), lens.tolist(), strict=True)
    ]
    return np.array(which, dtype=np.intp), list(ids)
