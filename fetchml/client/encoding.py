"""Points as metrics.bin records, a run of them at a time, without a Python object per point.

The caller's thread queues each point as four items of one flat list, its
name, value, step and time (`WIDTH`); the Batcher slices the four columns out
of a run of them. `encode_points` takes those columns and returns their
records (protocol RECORD_HEAD, whole seconds, the cached name) as one bytes
object, with where each record ends. Each column is
packed by one struct.pack call, which converts exactly as packing a record does
(a value without __float__, a step that is not an integer raise), and one numpy
record array lays the columns and the names out as rows: the records
themselves when every name has the same length, else padded rows the padding
is then cut from. When a column does not convert, the points go one at a time
(`encode_slowly`), so one bad value rejects only its own point; so do runs of
at most SMALL points.

Few numpy calls per run, and none per point, on purpose: the worker thread
encodes while the caller's thread logs, and every numpy call long enough to
release the interpreter lock can leave the worker waiting a whole switch
interval (5 ms) to get it back from a caller busy in Python.
"""

from collections.abc import Callable, Sequence
from functools import cache
from itertools import accumulate
from struct import error as struct_error
from struct import pack
from typing import Any, cast

import numpy as np

from fetchml.protocol.metrics import RECORD_HEAD

Point = tuple[str, float, int | None, float]
"""One log() call, (name, value, step, Unix time): the caller's thread queues its four items."""
WIDTH = 4
"""Queue items per point."""
Names = dict[str, tuple[bytes, int]]
Ends = Sequence[int]
"""Where each record ends in the encoded bytes, ascending (a range when all have one size)."""

SMALL = 16
"""Up to this many points go one at a time: numpy's cost per call outweighs per-point packing
(a flush of one point pays it on its round trip)."""

Columns = tuple[list[str], list[Any], list[Any], list[Any]]
"""Names, values, steps and times, one list each."""


def encode_points(
    cols: Columns,
    names: Names,
    next_step: dict[str, int],
    reject: Callable[[str, str], None],
) -> tuple[bytes, Ends]:
    """The records of the points in `cols` and the offset just past each; `next_step`
    gives the default steps and is advanced; a point whose value cannot be encoded is
    left out and `reject`ed with its name and the reason."""
    labels, values, steps, stamps = cols
    n = len(labels)
    if n <= SMALL:
        return encode_slowly(cols, names, next_step, reject)
    try:
        value_col = pack(f">{n}d", *values)
        stamp_col = pack(f"={n}d", *stamps)
        try:
            step_col = pack(f">{n}I", *steps)
            known = cast(list[int], steps)  # each packed as an integer: none is None
        except struct_error:
            if None not in steps:
                raise
            known = default_steps(labels, steps, next_step)
            step_col = pack(f">{n}I", *known)
    except (struct_error, TypeError, OverflowError):
        return encode_slowly(cols, names, next_step, reject)
    if labels.count(labels[0]) == n:
        distinct = labels[:1]
        next_step[labels[0]] = int(known[-1]) + 1
    else:
        distinct = list(dict.fromkeys(labels))
        backwards = labels[::-1]
        for name in distinct:
            next_step[name] = int(known[n - 1 - backwards.index(name)]) + 1
    spelled = [names[name] for name in distinct]
    longest = max(length for _, length in spelled)
    table = np.zeros((len(spelled), 1 + longest), np.uint8)  # each name's length and bytes
    for row, (raw, length) in zip(table, spelled, strict=True):
        row[0] = length
        row[1 : 1 + length] = np.frombuffer(raw, np.uint8)
    rows = np.empty(n, _row_type(longest))
    rows["ts"] = np.frombuffer(stamp_col, np.float64)  # truncated to whole seconds, as int()
    rows["step"] = np.frombuffer(step_col, ">u4")
    rows["value"] = np.frombuffer(value_col, ">f8")
    code: np.ndarray | int = 0
    if len(distinct) == 1:
        rows["tail"] = table[0]
    else:
        index = {name: i for i, name in enumerate(distinct)}
        code = np.fromiter(map(index.__getitem__, labels), np.intp, n)
        rows["tail"] = table[code]
    width = RECORD_HEAD.size + longest
    lengths = table[:, 0].astype(np.int64)
    if len(distinct) == 1 or (lengths == longest).all():  # records of one size
        return rows.tobytes(), range(width, (n + 1) * width, width)
    sizes = lengths[code] + RECORD_HEAD.size
    keep = np.arange(width) < sizes[:, None]
    return rows.view(np.uint8).reshape(n, width)[keep].tobytes(), np.cumsum(sizes).tolist()


@cache
def _row_type(longest: int) -> np.dtype:
    """A record whose name takes `longest` bytes: RECORD_HEAD's fields, then the length byte
    and the name (padded) as one field."""
    return np.dtype(
        [("ts", ">u8"), ("step", ">u4"), ("value", ">f8"), ("tail", np.uint8, (1 + longest,))]
    )


def default_steps(
    labels: Sequence[str], steps: Sequence[int | None], next_step: dict[str, int]
) -> list[int]:
    """Steps with each None replaced by one more than the previous step of that name
    (`next_step` holds where each name goes on from; it is not changed here)."""
    following = dict(next_step)
    filled: list[int] = []
    for name, step in zip(labels, steps, strict=True):
        if step is None:
            step = following.get(name, 0)
        following[name] = step + 1
        filled.append(step)
    return filled


def encode_slowly(
    cols: Columns,
    names: Names,
    next_step: dict[str, int],
    reject: Callable[[str, str], None],
) -> tuple[bytes, Ends]:
    """encode_points one point at a time."""
    parts: list[bytes] = []
    pack = RECORD_HEAD.pack
    for name, value, step, stamp in zip(*cols, strict=True):
        raw, length = names[name]
        if step is None:
            step = next_step.get(name, 0)
        try:
            parts.append(pack(int(stamp), step, value, length) + raw)
        except (struct_error, TypeError, OverflowError) as exc:
            reject(name, str(exc))
            continue
        next_step[name] = step + 1
    return b"".join(parts), list(accumulate(map(len, parts)))
