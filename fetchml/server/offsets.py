"""The record-offset index of one experiment, for paging, and its share of the memory
budget (8 bytes a record).

The index lists the start of every record indexed so far, then the end of the last
one. It is built lazily by the worker thread that reads a page, in place, while the
event loop holds `lock` for it; the event loop drops it (budget) or starts it again
(a new epoch of the file's state) only while nobody holds the lock.
"""

import bisect
import errno
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import anyio
import numpy as np

from fetchml.protocol.metrics import RECORD_MAX

from . import fastscan, files
from .budget import CacheBudget
from .entries import open_entry
from .files import METRICS


class Chunk(NamedTuple):
    data: bytes
    """Whole records, starting at record `start`."""
    start: int
    records: int
    total: int
    """Records in the valid prefix when read."""


def _empty() -> "array[int]":
    return array("Q", [0])


@dataclass(eq=False)
class OffsetIndex:
    offsets: "array[int]" = field(default_factory=_empty)
    epoch: int = -1
    """The FileState epoch the offsets belong to."""
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def lend(self, epoch: int) -> "array[int]":
        """The offsets for a worker (the caller holds `lock`), started again when they
        belong to an earlier epoch of the file."""
        assert self.lock.locked()
        if epoch != self.epoch:
            self.offsets, self.epoch = _empty(), epoch
        return self.offsets

    def charge(self, budget: CacheBudget, key: object) -> None:
        """Charge the index to the budget; when dropped it is rebuilt on demand."""

        def drop() -> bool:
            if self.lock.locked():
                return False
            self.offsets = _empty()
            return True

        budget.charge(key, len(self.offsets) * 8, drop)


def read_range(
    path: Path, offsets: "array[int]", end: int, start: int, max_bytes: int, stop: int, total: int
) -> Chunk:
    """Whole records from index `start` (at least one, at most `max_bytes`), below `stop`,
    of the first `total` records (`end` bytes); extends `offsets` as far as needed."""
    fd = open_entry(path, METRICS, os.O_RDONLY)
    try:
        if len(offsets) <= total:
            files.index_records(fd, offsets.pop(), end, offsets)
            del offsets[total + 1 :]
        total = min(total, len(offsets) - 1)
        stop = min(stop, total)
        begin = offsets[start]
        limit = begin + max_bytes
        stop_index = max(bisect.bisect_right(offsets, limit, start + 1, stop + 1) - 1, start + 1)
        data = os.pread(fd, offsets[stop_index] - begin, begin)
    finally:
        os.close(fd)
    return Chunk(data, start, stop_index - start, total)


def read_anchored(
    path: Path, at: int, first: int, end: int, start: int, max_bytes: int, stop: int, total: int
) -> Chunk:
    """What read_range gives, walking from record `first` at byte `at` (an anchor of the
    sidecars) instead of an offset index; records are found with numpy (fastscan)."""
    fd = open_entry(path, METRICS, os.O_RDONLY)
    mean = -(-end // max(total, 1))  # bytes a record takes in this file, on average
    try:
        while first < start:  # skip whole records up to `start`, reading about what they take
            guess = 2 * (start - first + 1) * mean + RECORD_MAX
            buf = os.pread(fd, min(files.READ_CHUNK, guess, end - at), at)
            if not buf:
                raise OSError(errno.EIO, f"short read at offset {at}")
            starts, after = fastscan.find_starts(fastscan.Buffer(buf))
            if not len(starts):
                raise OSError(errno.EIO, f"short read at offset {at}")
            if start - first < len(starts):
                at += int(starts[start - first])
                break
            at, first = at + after, first + len(starts)
        want = min(max_bytes, (stop - start) * RECORD_MAX)
        data = os.pread(fd, min(max(want, RECORD_MAX), end - at), at)
    finally:
        os.close(fd)
    starts, after = fastscan.find_starts(fastscan.Buffer(data))
    starts = np.append(starts, after)
    fits = int(np.searchsorted(starts, max_bytes, side="right")) - 1
    take = max(1, min(fits, stop - start))
    return Chunk(data[: int(starts[take])], start, take, total)
