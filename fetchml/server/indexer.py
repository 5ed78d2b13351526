"""Building and extending an experiment's sidecars (sidecar.py) in one pass over the part of
metrics.bin after the last checkpoint: it validates the records by PROTOCOL.md's rule
(the same valid prefix as files.scan_file), appends each name's rows to its column, and
writes a new checkpoint. Each big read is made into rows by batches.py: at once when it
repeats one layout of names, else found by their length bytes and checked with numpy; a
stretch that is not plainly valid is checked by protocol.metrics.scan.

Plain synchronous code for a worker thread; the caller holds the experiment's sidecar
lock (and in cluster mode its flock: exlock.py), so one writer at a time.
"""

import logging
import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from . import exlock, sidecar
from .batches import Batch, cycles, general
from .entries import Damaged
from .fastscan import periodic
from .files import FileScan, scan_file, write_all
from .sidecar import ANCHORS, INDEX, ROW, Checkpoint, NameInfo, Record

logger = logging.getLogger(__name__)

READ_BYTES = 4 << 20
"""metrics.bin bytes parsed at a time."""
MAX_NAMES = 4096
"""An experiment with more distinct names than this gets no sidecars (TooManyNames)."""
SYNC_BYTES = 64 << 20
"""Column bytes written between two syncs, which run in a thread of their own while the pass
goes on: the one at the end has little left to write."""


UNINDEXABLE = Checkpoint(0, 0, -1, 0, b"")
"""What `resume` gives when the sidecars could not be written: the store stops trying."""


class TooManyNames(Exception):
    """More distinct names than MAX_NAMES (a column file each): no sidecars."""


@dataclass(eq=False)
class _Column:
    k: int
    info: NameInfo
    fd: int
    crc: int


class _Builder:
    def __init__(self, directory: Path, cp: Checkpoint) -> None:
        self.directory = directory
        self.columns: dict[bytes, _Column] = {}
        sidecar.make_index(directory)
        self.fds: list[int] = []
        self.pool = ThreadPoolExecutor(1, "sidecar-sync")
        self.syncing: Future[None] | None = None
        self.unsynced = 0
        try:
            for k, info in enumerate(cp.names):
                fd = self._open(sidecar.column_path(directory, k), info.rows * ROW.itemsize)
                self.columns[info.name] = _Column(k, info, fd, info.crc)
            self.anchors_fd = self._open(directory / INDEX / ANCHORS, cp.anchors * 8)
        except BaseException:
            self.close()
            raise
        self.anchors, self.anchors_crc = cp.anchors, cp.anchors_crc

    def _open(self, path: Path, keep: int) -> int:
        fd = sidecar.open_append(path, keep)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        self.pool.shutdown()  # a sync under way ends before its descriptors close
        for fd in self.fds:
            os.close(fd)

    def add(self, batch: Batch) -> None:
        """Records of one read: each name's rows and the anchors."""
        if len(batch.anchors):
            at = batch.anchors.astype("<u8").tobytes()
            write_all(self.anchors_fd, at)
            self.anchors += len(at) // 8
            self.anchors_crc = zlib.crc32(at, self.anchors_crc)
        for name, rows in zip(batch.names, batch.rows, strict=True):
            self._append(name, rows)
        if self.unsynced >= SYNC_BYTES and (self.syncing is None or self.syncing.done()):
            if self.syncing is not None:
                self.syncing.result()  # raises what the last one failed with
            self.syncing = self.pool.submit(_sync, list(self.fds))
            self.unsynced = 0

    def _append(self, name: bytes, rows: npt.NDArray[np.void]) -> None:
        column = self.columns.get(name)
        first = _record(rows[0])
        last = _record(rows[-1])
        values = rows["value"]
        low, high = float(np.fmin.reduce(values)), float(np.fmax.reduce(values))
        if column is None:
            if len(self.columns) >= MAX_NAMES:
                raise TooManyNames(f"more than {MAX_NAMES} names")
            k = len(self.columns)
            fd = self._open(sidecar.column_path(self.directory, k), 0)
            info = NameInfo(name, 0, 0, first, last, low, high)
            column = self.columns[name] = _Column(k, info, fd, 0)
        old = column.info
        data = rows.tobytes()
        write_all(column.fd, data)
        self.unsynced += len(data)
        column.crc = zlib.crc32(data, column.crc)
        column.info = NameInfo(
            name,
            old.rows + len(rows),
            column.crc,
            old.first,
            last,
            float(np.fmin(old.low, low)),
            float(np.fmax(old.high, high)),
        )

    def finish(self, fd: int, end: int, count: int) -> Checkpoint:
        if self.syncing is not None:
            self.syncing.result()
        _sync(self.fds)
        st = os.fstat(fd)
        names = sorted(self.columns.values(), key=lambda c: c.k)
        cp = Checkpoint(
            st.st_dev,
            st.st_ino,
            end,
            count,
            sidecar.tail_digest(fd, end),
            tuple(c.info for c in names),
            self.anchors,
            self.anchors_crc,
        )
        sidecar.save(self.directory, cp)
        return cp


def _sync(fds: list[int]) -> None:
    for fd in fds:
        os.fdatasync(fd)


def _record(row: np.void) -> Record:
    return Record(int(row["index"]), int(row["ts"]), int(row["step"]), float(row["value"]))


def extend(
    directory: Path, fd: int, cp: Checkpoint | None, limit: int = -1
) -> tuple[Checkpoint, FileScan]:
    """Index metrics.bin (open as `fd`) from the end of `cp` (a trusted checkpoint) or from
    the start, up to the end of its valid prefix (or `limit` bytes, known valid); save and
    return the new checkpoint with what files.scan_file would have found from there."""
    size = os.fstat(fd).st_size
    if limit >= 0:
        size = min(size, limit)
    if cp is None:  # from scratch: nothing of the old sidecars stays
        sidecar.remove(directory)
        cp = Checkpoint(0, 0, 0, 0, b"")
    builder = _Builder(directory, cp)
    try:
        pos, count = cp.end, cp.count
        carry = b""
        while True:
            at = pos + len(carry)
            chunk = os.pread(fd, min(READ_BYTES, size - at), at) if at < size else b""
            data = carry + chunk
            found = periodic(data) if chunk else None
            if found is not None:  # the rest of the buffer comes again with the next read
                batch = cycles(found, pos, count)
                end, incomplete = len(found.table) * found.size, True
            else:
                batch, end, incomplete = general(data, pos, count)
            if batch.records:
                builder.add(batch)
            count += batch.records
            pos += end
            carry = data[end:]
            if not (incomplete and chunk):
                break
        return builder.finish(fd, pos, count), FileScan(pos, count, size)
    finally:
        builder.close()


def resume(
    directory: Path, fd: int, end: int, count: int, cp: Checkpoint | None, index_bytes: int
) -> tuple[FileScan, Checkpoint | None]:
    """What files.scan_file(fd, end, count) finds, with the sidecars' help: the scan starts
    after a trusted checkpoint when that is further, and when `index_bytes` (0: never) or
    more of the file are past the checkpoint, they are indexed on the way. Also returns
    the checkpoint now trusted (None when there is none; UNINDEXABLE when writing failed)."""
    cp = check(directory, fd, cp)
    if cp is not None and cp.end > end:
        end, count = cp.end, cp.count
    size = os.fstat(fd).st_size
    if index_bytes and size - (cp.end if cp else 0) >= index_bytes:
        try:
            cp, result = extend(directory, fd, cp)
            return result, cp
        except (OSError, TooManyNames, Damaged) as exc:
            logger.warning("%s: sidecars not written: %s", directory.name, exc)
            return scan_file(fd, end, count), UNINDEXABLE
    return scan_file(fd, end, count), cp


def check(directory: Path, fd: int, cp: Checkpoint | None) -> Checkpoint | None:
    """`cp` (or the stored checkpoint when None) if it still describes the file."""
    if cp is None:
        cp, why = sidecar.trusted(directory, fd)
    else:
        try:
            sidecar.verify(directory, fd, cp)
            why = None
        except (sidecar.Unusable, OSError) as exc:
            cp, why = None, str(exc)
    if why:
        logger.warning("%s: sidecars ignored (%s); they are rebuilt", directory.name, why)
    return cp


def extend_to(directory: Path, cp: Checkpoint | None, end: int, shared: bool = False) -> Checkpoint:
    """The sidecars extended (or rebuilt) to cover the first `end` bytes of metrics.bin,
    a valid prefix; with `shared`, under the experiment's flock (exlock.held: NotFound when
    it is gone)."""
    with exlock.opened(directory, shared) as fd:
        cp = check(directory, fd, cp)
        if cp is not None and cp.end >= end:
            return cp
        return extend(directory, fd, cp, end)[0]
