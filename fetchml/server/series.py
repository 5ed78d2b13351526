"""Per-name columns of an experiment's metrics, for downsampling and latest values.

Built in a worker thread on the first downsampling query of an experiment and
extended from the file as it grows, so a repeated query costs the LTTB pass
alone. Columns are numpy arrays (20 bytes a record) charged to the store's
cache budget (`storage.cache_bytes`); the least recently used are dropped
first, and an experiment whose columns alone exceed the budget is not kept
after the query that built them.
"""

import contextlib
import ctypes
import errno
import os
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from fetchml.protocol.metrics import RECORD_MIN, encode_record, walk

from .files import storage_error
from .storage import ExperimentStore

READ_BYTES = 1 << 20
"""File bytes parsed at a time; the gather's index is 80 bytes a record of it."""
RECORD_BYTES = 20
"""Column bytes a record: timestamp, step, value."""
TRIM_BYTES = 16 << 20
"""While joining pieces, freed pages are given back every this many bytes."""
SMALL_BUCKET = 32
"""LTTB buckets of fewer points are searched in Python: numpy's cost per call is larger."""
_HEAD = np.dtype([("timestamp", ">u8"), ("step", ">u4"), ("value", ">f8")])
_HEAD_BYTES = np.arange(_HEAD.itemsize, dtype=np.int32)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except AttributeError:  # not glibc
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Series:
    """One metric name's records, in file order. Never changed: growing makes a new one."""

    timestamps: U64
    steps: U32
    values: F64

    @property
    def nbytes(self) -> int:
        return self.timestamps.nbytes + self.steps.nbytes + self.values.nbytes

    def record(self, i: int, name: bytes) -> bytes:
        return encode_record(
            int(self.timestamps[i]), int(self.steps[i]), float(self.values[i]), name
        )


@dataclass(eq=False)
class _Entry:
    series: dict[bytes, Series] = field(default_factory=dict)
    """Names in order of first appearance."""
    records: int = 0
    end: int = 0
    """File bytes parsed so far."""
    users: int = 0
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def nbytes(self) -> int:
        # Beside the arrays: the name, its Series and the arrays' headers, about 200 bytes.
        return sum(s.nbytes + len(name) + 200 for name, s in self.series.items())


class SeriesCache:
    def __init__(self, store: ExperimentStore) -> None:
        self.store = store
        self._entries: dict[str, _Entry] = {}

    @contextlib.asynccontextmanager
    async def columns(self, commit: str) -> AsyncIterator[dict[bytes, Series]]:
        """Every name's columns, current with the file's valid prefix; kept while in use."""
        entry = self._entries.get(commit)
        if entry is None:
            entry = self._entries[commit] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                await self._update(commit, entry)
            yield dict(entry.series)
        finally:
            entry.users -= 1
            self._charge(commit, entry, idle=True)

    async def _update(self, commit: str, entry: _Entry) -> None:
        path, total, end = await self.store.prefix(commit)
        if total < entry.records:  # the file was replaced from outside
            entry.series, entry.records, entry.end = {}, 0, 0
        if entry.records < total:
            # Make room first: columns take fewer bytes than the records they hold.
            self._charge(commit, entry, entry.nbytes + end - entry.end)
            try:
                await anyio.to_thread.run_sync(_extend, entry, path, end)
            except OSError as exc:
                raise storage_error(exc) from None
            entry.records = total

    def _charge(self, commit: str, entry: _Entry, nbytes: int = -1, idle: bool = False) -> None:
        """Charge the entry's bytes (or `nbytes`, about to be needed) to the budget; once
        `idle`, an entry that alone is over the budget goes at once."""

        def drop() -> bool:
            if entry.users:
                return False
            if self._entries.get(commit) is entry:
                del self._entries[commit]
            return True

        key = ("columns", commit)
        if self._entries.get(commit) is not entry:  # dropped while in use: nothing to keep
            return
        self.store.budget.charge(key, entry.nbytes if nbytes < 0 else nbytes, drop)
        if idle:
            self.store.budget.trim()

    def drop(self, commit: str) -> None:
        """Forget an experiment (pruned): a new one under the same commit starts empty."""
        self._entries.pop(commit, None)
        self.store.budget.forget(("columns", commit))


def _extend(entry: _Entry, path: Path, end: int) -> None:
    """Parse the file from where the entry stopped up to `end` into its columns."""
    pieces: dict[bytes, list[tuple[U64, U32, F64]]] = {}
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = entry.end
        while pos < end:
            data = os.pread(fd, min(READ_BYTES, end - pos), pos)
            used = _parse(data, pieces)
            if used == 0:
                raise OSError(errno.EIO, f"short read of {path} at offset {pos}")
            pos += used
    finally:
        os.close(fd)
    series = dict(entry.series)
    for name in list(pieces):
        parts = pieces.pop(name)
        old = series.get(name)
        if old is not None:
            parts.insert(0, (old.timestamps, old.steps, old.values))
        series[name] = _join(parts)
    entry.series, entry.end = series, end
    release_free_memory()


def release_free_memory() -> None:
    """Give the pages of freed buffers back to the system (glibc keeps them otherwise)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _join(parts: list[tuple[U64, U32, F64]]) -> Series:
    """One series from its pieces, each freed once copied. The new arrays' pages are
    touched only as the pieces go (and the freed ones are given back every TRIM_BYTES),
    so memory grows by about TRIM_BYTES, not by a second copy of the series."""
    size = sum(len(part[0]) for part in parts)
    out: list[npt.NDArray[Any]] = [np.empty(size, t) for t in (np.uint64, np.uint32, np.float64)]
    pos = freed = 0
    parts.reverse()
    while parts:
        piece = parts.pop()
        n = len(piece[0])
        for column, values in zip(out, piece, strict=True):
            column[pos : pos + n] = values
        pos += n
        freed += n * RECORD_BYTES
        del piece
        if freed >= TRIM_BYTES:
            release_free_memory()
            freed = 0
    return Series(out[0], out[1], out[2])


def _parse(data: bytes, pieces: dict[bytes, list[tuple[U64, U32, F64]]]) -> int:
    """Add the whole records at the start of `data` to `pieces`; returns their bytes."""
    starts = array("i")
    pos = walk(data, starts)
    if not starts:
        return 0
    starts.append(pos)
    ids: dict[bytes, int] = {}
    which = array(
        "i", [ids.setdefault(data[a + RECORD_MIN : b], len(ids)) for a, b in pairwise(starts)]
    )
    del starts[-1]
    offsets = np.frombuffer(starts, dtype=np.int32)
    heads = np.frombuffer(data, np.uint8)[offsets[:, None] + _HEAD_BYTES].view(_HEAD)[:, 0]
    if len(ids) > 1:
        group = np.frombuffer(which, dtype=np.int32)
        order = np.argsort(group, kind="stable")
        cuts = np.cumsum(np.bincount(group))[:-1]
        runs = np.split(heads[order], cuts)
    else:
        runs = [heads]
    for name, rows in zip(ids, runs, strict=True):
        columns = (
            rows["timestamp"].astype(np.uint64),
            rows["step"].astype(np.uint32),
            rows["value"].astype(np.float64),
        )
        pieces.setdefault(name, []).append(columns)
    return pos


Load = Callable[[int, int], tuple[npt.NDArray[np.generic], npt.NDArray[np.generic]]]
"""(x, y) of points [lo, hi)."""
LTTB_WINDOW = 1 << 20
"""Points held at a time by lttb_windows (whole buckets: more when one bucket is larger)."""


def lttb(xs: npt.NDArray[np.generic], ys: F64, threshold: int) -> list[int]:
    """Largest-Triangle-Three-Buckets: indices of `threshold` points, first and last kept.
    A point whose area is NaN is never picked over one whose area is a number."""
    return lttb_windows(len(xs), threshold, lambda lo, hi: (xs[lo:hi], ys[lo:hi]))


def _windows(bounds: list[int], window: int) -> list[tuple[int, int]]:
    """Runs of whole buckets [first, stop) of about `window` points (at least one bucket)."""
    out = []
    first = 0
    last = len(bounds) - 1  # buckets: [bounds[i], bounds[i + 1]) for i < last
    while first < last:
        stop = first + 1
        while stop < last and bounds[stop + 1] - bounds[first] <= window:
            stop += 1
        out.append((first, stop))
        first = stop
    return out


def lttb_windows(n: int, threshold: int, load: Load, window: int = LTTB_WINDOW) -> list[int]:
    """`lttb` over `n` points read a window of whole buckets at a time by `load`, in one
    pass: the same answer, holding about two windows' points (the sums of a bucket do not
    depend on the window it is read in; a window's last bucket is chosen from once the
    next window's first average is known)."""
    if threshold >= n:
        return list(range(n))
    if threshold == 1:
        return [0]
    if threshold == 2:
        return [0, n - 1]
    every = (n - 2) / (threshold - 2)
    # Bucket i holds [bounds[i], bounds[i + 1]); after the last one, the last point alone.
    bounds = [int(i * every) + 1 for i in range(threshold - 1)]
    small = every < SMALL_BUCKET
    avg_x: list[float] = []
    avg_y: list[float] = []
    chosen = [0]
    ax, ay = (float(v[0]) for v in load(0, 1))

    def pick(i: int, base: int, x: Any, y: Any) -> None:
        """Choose bucket i's point: `x` and `y` hold the points from index `base` on."""
        nonlocal ax, ay
        lo, hi = bounds[i] - base, bounds[i + 1] - base
        # Twice the triangle's area is |dx * (y - ay) + dy * (x - ax)|.
        dx, dy = ax - avg_x[i + 1], avg_y[i + 1] - ay
        if small:
            a, best = lo, -1.0
            for j in range(lo, hi):
                area = abs(dx * (y[j] - ay) + dy * (x[j] - ax))
                if area > best:
                    a, best = j, area
        else:
            areas = np.abs(dx * (y[lo:hi] - ay) + dy * (x[lo:hi] - ax))
            a = lo + int(np.argmax(np.fmax(areas, -1.0)))  # NaN: -1
        ax, ay = float(x[a]), float(y[a])
        chosen.append(base + a)

    pending: tuple[int, int, Any, Any] | None = None
    for first, stop in _windows(bounds, window):
        base = bounds[first]
        x, y = (np.asarray(v, dtype=np.float64) for v in load(base, bounds[stop]))
        starts = [b - base for b in bounds[first:stop]]
        spans = np.diff(bounds[first : stop + 1])
        avg_x += (np.add.reduceat(x, starts) / spans).tolist()
        avg_y += (np.add.reduceat(y, starts) / spans).tolist()
        xs, ys = (x.tolist(), y.tolist()) if small else (x, y)
        if pending is not None:
            pick(*pending)
        for i in range(first, stop - 1):
            pick(i, base, xs, ys)
        pending = (stop - 1, base, xs, ys)
    lx, ly = (float(v[0]) for v in load(n - 1, n))
    avg_x.append(lx)
    avg_y.append(ly)
    assert pending is not None  # threshold > 2: one bucket at least
    pick(*pending)
    chosen.append(n - 1)
    return chosen
