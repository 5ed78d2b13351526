"""Per-name columns of an experiment's metrics, for downsampling and latest values.

Built on the first downsampling query of an experiment and extended from the
file as it grows, so a repeated query costs the LTTB pass alone. Only the
most recently used experiments are kept.
"""

import struct
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from protocol.records import RECORD_HEAD, RECORD_MIN

from .storage import ExperimentStore

READ_BYTES = 4 << 20
_COLUMNS = struct.Struct(">QIdB")


@dataclass(eq=False)
class Series:
    """One metric name's records, in file order."""

    timestamps: "array[int]" = field(default_factory=lambda: array("Q"))
    steps: "array[int]" = field(default_factory=lambda: array("I"))
    values: "array[float]" = field(default_factory=lambda: array("d"))

    def record(self, i: int, name: bytes) -> bytes:
        return RECORD_HEAD.pack(self.timestamps[i], self.steps[i], self.values[i], len(name)) + name


@dataclass(eq=False)
class _Entry:
    series: dict[bytes, Series] = field(default_factory=dict)
    """Names in order of first appearance."""
    records: int = 0
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class SeriesCache:
    def __init__(self, store: ExperimentStore, max_experiments: int = 4) -> None:
        self.store = store
        self.max_experiments = max_experiments
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    async def get(self, commit: str) -> dict[bytes, Series]:
        """Every name's columns, current with the file's valid prefix."""
        entry = self._entries.pop(commit, None) or _Entry()
        self._entries[commit] = entry
        while len(self._entries) > self.max_experiments:
            self._entries.popitem(last=False)
        async with entry.lock:
            total = await self.store.count(commit)
            if total < entry.records:  # the file was replaced from outside
                entry.series, entry.records = {}, 0
            while entry.records < total:
                chunk = await self.store.read(commit, entry.records, READ_BYTES)
                _add(entry.series, chunk.data)
                entry.records += chunk.records
        return entry.series

    def drop(self, commit: str) -> None:
        """Forget an experiment (pruned): a new one under the same commit starts empty."""
        self._entries.pop(commit, None)


def _add(series: dict[bytes, Series], data: bytes) -> None:
    unpack = _COLUMNS.unpack_from
    get = series.get
    pos = 0
    size = len(data)
    while pos < size:
        timestamp, step, value, length = unpack(data, pos)
        end = pos + RECORD_MIN + length
        name = data[pos + RECORD_MIN : end]
        s = get(name)
        if s is None:
            s = series[name] = Series()
        s.timestamps.append(timestamp)
        s.steps.append(step)
        s.values.append(value)
        pos = end


def lttb(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """Largest-Triangle-Three-Buckets: indices of `threshold` points, first and last kept."""
    n = len(xs)
    if threshold >= n:
        return list(range(n))
    if threshold == 1:
        return [0]
    if threshold == 2:
        return [0, n - 1]
    every = (n - 2) / (threshold - 2)
    chosen = [0]
    a = 0
    for i in range(threshold - 2):
        start = int(i * every) + 1
        stop = int((i + 1) * every) + 1
        next_start, next_stop = stop, min(int((i + 2) * every) + 1, n)
        if i == threshold - 3:
            next_start, next_stop = n - 1, n
        span = next_stop - next_start
        avg_x = sum(xs[next_start:next_stop]) / span
        avg_y = sum(ys[next_start:next_stop]) / span
        ax, ay = xs[a], ys[a]
        # Twice the triangle's area is |dx * (y - ay) + dy * (x - ax)|.
        dx, dy = ax - avg_x, avg_y - ay
        best, best_area = start, -1.0
        for j, x, y in zip(range(start, stop), xs[start:stop], ys[start:stop], strict=True):
            area = abs(dx * (y - ay) + dy * (x - ax))
            if area > best_area:
                best_area, best = area, j
        chosen.append(best)
        a = best
    chosen.append(n - 1)
    return chosen
