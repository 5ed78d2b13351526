"""Points as metrics.bin records, a run of them at a time, without a Python object per point.

`encode_points` takes the (name, value, step, time) tuples the caller's thread
queued and returns their records (protocol RECORD_HEAD, whole seconds, the
cached name) as one bytes object, with where each record ends. The columns go
through array.array, which converts exactly as struct.pack does (a value
without __float__, a step that is not an integer raise), and numpy lays them
out big-endian in one buffer: fixed-size records when every name has the same
length, else the heads and the names scattered into place. When a column does
not convert, the points go one at a time (`encode_slowly`), so one bad value
rejects only its own point; so do runs of at most SMALL points.
"""

from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate
from operator import itemgetter
from struct import error as struct_error

import numpy as np

from fetchml.protocol.metrics import RECORD_HEAD

Point = tuple[str, float, int | None, float]
"""One log() call as the caller's thread queues it, (name, value, step, Unix time): a plain
tuple, no object per point."""
Names = dict[str, tuple[bytes, int]]

HEAD = np.dtype([("stamp", ">u8"), ("step", ">u4"), ("value", ">f8"), ("length", "u1")])
assert HEAD.itemsize == RECORD_HEAD.size


SMALL = 16
"""Up to this many points go one at a time: numpy's cost per call outweighs per-point packing
(a flush of one point pays it on its round trip)."""

Columns = tuple[list[str], list[float], list[int | None], list[float]]
_NAME, _VALUE, _STEP, _STAMP = (itemgetter(i) for i in range(4))


def columns(points: Sequence[Point]) -> Columns:
    """The points' names, values, steps and times; TypeError when one is not a tuple."""
    return (
        list(map(_NAME, points)),
        list(map(_VALUE, points)),
        list(map(_STEP, points)),
        list(map(_STAMP, points)),
    )


def encode_points(
    points: Sequence[Point],
    names: Names,
    next_step: dict[str, int],
    reject: Callable[[str, str], None],
    cols: Columns | None = None,
) -> tuple[bytes, np.ndarray]:
    """The records of `points` (their `cols`, when already taken) and the offset just past
    each (int64); `next_step` gives the default steps and is advanced; a point whose value
    cannot be encoded is left out and `reject`ed with its name and the reason."""
    if len(points) <= SMALL:
        return encode_slowly(points, names, next_step, reject)
    labels, values, steps, stamps = columns(points) if cols is None else cols
    try:
        value_col = array("d", values)
        stamp_col = array("d", stamps)
        try:
            step_col: array[int] = array("I", steps)  # type: ignore[arg-type]
        except TypeError:
            if None not in steps:
                raise
            step_col = array("I", default_steps(labels, steps, next_step))
    except (TypeError, OverflowError):
        return encode_slowly(points, names, next_step, reject)
    n = len(points)
    if labels.count(labels[0]) == n:
        distinct = labels[:1]
        next_step[labels[0]] = step_col[-1] + 1
    else:
        distinct = list(dict.fromkeys(labels))
        backwards = labels[::-1]
        for name in distinct:
            next_step[name] = step_col[n - 1 - backwards.index(name)] + 1
    head = np.empty(n, HEAD)
    head["stamp"] = np.frombuffer(stamp_col, np.float64)  # truncates, as int() does
    head["step"] = np.frombuffer(step_col, np.uint32)
    head["value"] = np.frombuffer(value_col, np.float64)
    spelled = [names[name] for name in distinct]
    longest = max(length for _, length in spelled)
    table = np.zeros((len(spelled), longest), np.uint8)
    for row, (raw, length) in zip(table, spelled, strict=True):
        row[:length] = np.frombuffer(raw, np.uint8)
    lengths = np.array([length for _, length in spelled], np.int64)
    width = RECORD_HEAD.size + longest
    padded = np.empty((n, width), np.uint8)
    if len(distinct) == 1:
        code: np.ndarray | int = 0
        head["length"] = lengths[0]
    else:
        index = {name: i for i, name in enumerate(distinct)}
        code = np.fromiter(map(index.__getitem__, labels), np.intp, n)
        head["length"] = lengths[code]
    padded[:, : RECORD_HEAD.size] = head.view(np.uint8).reshape(n, RECORD_HEAD.size)
    padded[:, RECORD_HEAD.size :] = table[code]
    sizes = lengths[code] + RECORD_HEAD.size
    if len(distinct) == 1 or not (lengths - longest).any():  # records of one size
        return padded.tobytes(), np.arange(1, n + 1, dtype=np.int64) * width
    keep = np.arange(width) < sizes[:, None]
    return padded[keep].tobytes(), np.cumsum(sizes)


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
    points: Sequence[Point],
    names: Names,
    next_step: dict[str, int],
    reject: Callable[[str, str], None],
) -> tuple[bytes, np.ndarray]:
    """encode_points one point at a time."""
    parts: list[bytes] = []
    pack = RECORD_HEAD.pack
    for name, value, step, stamp in points:
        raw, length = names[name]
        if step is None:
            step = next_step.get(name, 0)
        try:
            parts.append(pack(int(stamp), step, value, length) + raw)
        except (struct_error, TypeError, OverflowError) as exc:
            reject(name, str(exc))
            continue
        next_step[name] = step + 1
    ends = np.fromiter(accumulate(map(len, parts)), np.int64, len(parts))
    return b"".join(parts), ends
