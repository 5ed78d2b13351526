"""One experiment's metrics file as the store sees it: what is known of its valid
prefix, its append descriptor, and the blocking steps (open and recover, write,
rescan, read) that the store runs in worker threads or, for small writes, inline.
"""

import asyncio
import bisect
import contextlib
import fcntl
import logging
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import anyio

from fetchml.protocol.records import Metadata

from . import files
from .entries import open_entry
from .errors import NotFound, StorageFault
from .files import MAX_TORN_BYTES, METRICS, cut_tail, fsync_dir, scan_file

logger = logging.getLogger(__name__)


class Pending(NamedTuple):
    data: bytes
    records: int
    future: "asyncio.Future[int]"


@dataclass(eq=False)
class Experiment:
    """What the store knows of one experiment directory."""

    commit: str
    path: Path
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    """Held while the file is opened, written or rescanned."""
    read_lock: anyio.Lock = field(default_factory=anyio.Lock)
    meta: Metadata | None = None
    damaged: str | None = None
    """Why it is listed as damaged (files.load_metadata), with `meta`."""
    meta_loaded: bool = False
    fd: int | None = None
    """Append descriptor, open while the experiment is written to."""
    scanned: bool = False
    end: int = 0
    """Bytes in the valid prefix."""
    count: int = 0
    """Records in the valid prefix."""
    size: int = 0
    """File size when last looked at."""
    corrupt: bool = False
    offsets: "array[int]" = field(default_factory=lambda: array("Q", [0]))
    """Start offsets of the records indexed so far, then the end of the last one."""
    pending: list[Pending] = field(default_factory=list)
    writing: list[Pending] = field(default_factory=list)
    """The batch of the flush in progress."""
    flushing: bool = False
    removed: bool = False
    """Pruned: this object no longer stands for the directory."""

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def busy(self) -> bool:
        return self.flushing or bool(self.pending) or self.lock.locked() or self.read_lock.locked()

    def open_for_append(self) -> None:
        """First open: create if missing, recover a torn tail, refuse a corrupt file."""
        path = self.metrics_path
        created = not os.path.lexists(path)
        try:
            fd = open_entry(self.path, METRICS, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        except FileNotFoundError:
            raise NotFound(f"experiment {self.commit} not found") from None
        try:
            if created:
                fsync_dir(self.path)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                # Resume after a prefix already known valid (an evicted experiment coming
                # back); anything after it is still checked: a torn tail is cut either way.
                if not (self.scanned and not self.corrupt and os.fstat(fd).st_size >= self.end):
                    self.end = self.count = 0
                    self.offsets = array("Q", [0])
                self.settle(fd, scan_file(fd, self.end, self.count))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def settle(self, fd: int, result: files.FileScan) -> None:
        """Take a scan's valid prefix; cut a torn tail (keeping a copy), or mark a larger
        remainder corrupt: appends are refused and only fsck --repair cuts it."""
        self.end, self.count, self.size, self.scanned = (
            result.end,
            result.records,
            result.size,
            True,
        )
        remainder = result.size - result.end
        self.corrupt = remainder > MAX_TORN_BYTES
        if self.corrupt:
            logger.error(
                "%s: %d unparseable bytes after the valid prefix (%d records): "
                "corrupt, appends refused; run fetchml-server fsck",
                self.metrics_path,
                remainder,
                result.records,
            )
        elif remainder:
            copy = cut_tail(fd, self.metrics_path, result.end, result.size)
            self.size = result.end
            logger.warning(
                "recovered %s: cut a torn tail of %d bytes after %d records (copy: %s)",
                self.metrics_path,
                remainder,
                result.records,
                copy.name,
            )

    def write(self, data: bytes, count: int, fsync: bool, wait: bool = True) -> int | None:
        """Lock, check the file's end, write, sync. Returns the first index (None when
        `wait` is False and another process holds the file lock)."""
        if self.removed:
            raise NotFound(f"experiment {self.commit} not found")
        if self.fd is None:
            self.open_for_append()
        if self.corrupt:
            raise StorageFault("metrics file corrupt")
        fd = self.fd
        assert fd is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size != self.end:
                self.resync(fd, size)
            first = self.count
            try:
                files.write_all(fd, data)
                if fsync:
                    os.fdatasync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self.end)  # nothing of a failed write stays
                raise
            self.end += len(data)
            self.size = self.end
            self.count += count
            return first
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def resync(self, fd: int, size: int) -> None:
        """The file is not where we left it: another writer, or a failed partial write."""
        if size < self.end:
            logger.error("%s shrank to %d bytes under us; rescanning", self.metrics_path, size)
            self.end = self.count = 0
            self.offsets = array("Q", [0])
        self.settle(fd, scan_file(fd, self.end, self.count))
        if self.corrupt:
            raise StorageFault("metrics file corrupt")

    def refresh(self) -> None:
        """Read-only: extend what we know of a file written by someone else (or nobody)."""
        try:
            fd = open_entry(self.path, METRICS, os.O_RDONLY)
        except FileNotFoundError:
            self.end = self.count = self.size = 0
            self.scanned = True
            return
        try:
            size = os.fstat(fd).st_size
            if self.scanned and size == self.size:
                return
            if size < self.end:
                self.end = self.count = 0
                self.offsets = array("Q", [0])
            result = scan_file(fd, self.end, self.count)
            self.end, self.count, self.size, self.scanned = result.end, result.records, size, True
            self.corrupt = size - result.end > MAX_TORN_BYTES
        finally:
            os.close(fd)

    def read_range(self, start: int, max_bytes: int, stop: int, total: int) -> "Chunk":
        """Whole records from index `start` (at least one, at most `max_bytes`), below `stop`."""
        fd = open_entry(self.path, METRICS, os.O_RDONLY)
        try:
            offsets = self.offsets  # record starts, then the end of the last one
            if len(offsets) <= total:
                files.index_records(fd, offsets.pop(), self.end, offsets)
                del offsets[total + 1 :]
            total = min(total, len(offsets) - 1)
            stop = min(stop, total)
            begin = offsets[start]
            limit = begin + max_bytes
            stop_index = max(
                bisect.bisect_right(offsets, limit, start + 1, stop + 1) - 1, start + 1
            )
            data = os.pread(fd, offsets[stop_index] - begin, begin)
        finally:
            os.close(fd)
        return Chunk(data, start, stop_index - start, total)

    def read_prefix(self, end: int) -> bytes:
        fd = open_entry(self.path, METRICS, os.O_RDONLY)
        try:
            return os.pread(fd, end, 0)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Chunk(NamedTuple):
    data: bytes
    """Whole records, starting at record `start`."""
    start: int
    records: int
    total: int
    """Records in the valid prefix when read."""
