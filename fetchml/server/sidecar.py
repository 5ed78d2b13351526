"""Sidecar files of an experiment: `index/` beside metrics.bin, rebuildable, never trusted
over the file.

- `index/checkpoint`: what a validated prefix of metrics.bin holds (its byte length and
  record count, per name the rows of its column, first and last record, min and max),
  and whose prefix it is: the device and inode of metrics.bin and a SHA-256 of the
  prefix's last bytes (up to 4 KiB). Written whole, atomically; it ends with a SHA-256
  of everything before it, and starts with a magic and a format version.
- `index/<k>.col`: the k-th name's records (in order of first appearance), one 28-byte
  row each (record index, timestamp, step, value; little-endian), appended as the file
  grows. Only the first `rows` rows named by the checkpoint count; their CRC-32 is in
  the checkpoint and is checked before a column is first read by a process.
- `index/anchors`: the byte offset of every ANCHOR-th record (u64 little-endian).

A checkpoint is trusted only when it decodes, the identity matches, its end is within
the file, the digested bytes are still those, and every column and the anchors are at
least as long as it says; anything else is ignored (the caller rebuilds). Plain
synchronous functions, for worker threads and the operator commands.
"""

import contextlib
import hashlib
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .entries import FILE_MODE, SAFE_FLAGS, Damaged, open_entry
from .files import DIR_MODE, write_file_atomic

INDEX = "index"
CHECKPOINT = "checkpoint"
ANCHORS = "anchors"
MAGIC = b"FMLIDX"
VERSION = 1
ANCHOR = 4096
"""Records between two anchors."""
DIGEST_BYTES = 4096
"""The prefix's last bytes a checkpoint holds the digest of."""
MAX_CHECKPOINT_BYTES = 64 << 20
ROW = np.dtype([("index", "<u8"), ("ts", "<u8"), ("step", "<u4"), ("value", "<f8")])
"""One row of a column file: 28 bytes, packed."""

_HEAD = struct.Struct(">6sHQQQQ32sQII")
"""magic, version, dev, ino, end, count, digest, anchors, anchors CRC, names."""
_RECORD = struct.Struct(">QQId")
"""index, timestamp, step, value."""
_NAME = struct.Struct(">QI")
"""rows, CRC-32 of the rows."""
_RANGE = struct.Struct(">dd")

Rows = npt.NDArray[np.void]


@dataclass(frozen=True, slots=True)
class Record:
    index: int
    ts: int
    step: int
    value: float


@dataclass(frozen=True, slots=True)
class NameInfo:
    name: bytes
    rows: int
    crc: int
    first: Record
    last: Record
    low: float
    """Smallest value, NaN ignored (NaN when every value is)."""
    high: float


@dataclass(frozen=True, slots=True)
class Checkpoint:
    dev: int
    ino: int
    end: int
    """Bytes of metrics.bin covered: a valid prefix."""
    count: int
    digest: bytes
    names: tuple[NameInfo, ...] = ()
    """In order of first appearance; the k-th one's column is `<k>.col`."""
    anchors: int = 0
    anchors_crc: int = 0


def encode(cp: Checkpoint) -> bytes:
    parts = [
        _HEAD.pack(
            MAGIC,
            VERSION,
            cp.dev,
            cp.ino,
            cp.end,
            cp.count,
            cp.digest,
            cp.anchors,
            cp.anchors_crc,
            len(cp.names),
        )
    ]
    for info in cp.names:
        parts.append(bytes([len(info.name)]) + info.name)
        parts.append(_NAME.pack(info.rows, info.crc))
        for r in (info.first, info.last):
            parts.append(_RECORD.pack(r.index, r.ts, r.step, r.value))
        parts.append(_RANGE.pack(info.low, info.high))
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


class Unusable(Exception):
    """A sidecar that cannot be trusted; the message says why."""


def decode(data: bytes) -> Checkpoint:
    body, check = data[:-32], data[-32:]
    if len(data) < _HEAD.size + 32 or data[: len(MAGIC)] != MAGIC:
        raise Unusable("not a checkpoint")
    if _HEAD.unpack_from(body)[1] != VERSION:
        raise Unusable(f"format version {_HEAD.unpack_from(body)[1]}, not {VERSION}")
    if hashlib.sha256(body).digest() != check:
        raise Unusable("checksum mismatch")
    _, _, dev, ino, end, count, digest, anchors, anchors_crc, n = _HEAD.unpack_from(body)
    pos = _HEAD.size
    names = []
    try:
        for _ in range(n):
            length = body[pos]
            name = body[pos + 1 : pos + 1 + length]
            pos += 1 + length
            rows, crc = _NAME.unpack_from(body, pos)
            pos += _NAME.size
            first = Record(*_RECORD.unpack_from(body, pos))
            last = Record(*_RECORD.unpack_from(body, pos + _RECORD.size))
            pos += 2 * _RECORD.size
            low, high = _RANGE.unpack_from(body, pos)
            pos += _RANGE.size
            names.append(NameInfo(name, rows, crc, first, last, low, high))
    except (IndexError, struct.error):
        raise Unusable("truncated") from None
    if pos != len(body):
        raise Unusable("trailing bytes")
    return Checkpoint(dev, ino, end, count, digest, tuple(names), anchors, anchors_crc)


def index_dir(directory: Path) -> Path:
    return directory / INDEX


def column_path(directory: Path, k: int) -> Path:
    return directory / INDEX / f"{k}.col"


def tail_digest(fd: int, end: int) -> bytes:
    start = max(0, end - DIGEST_BYTES)
    data = os.pread(fd, end - start, start)
    if len(data) != end - start:
        raise Unusable("metrics.bin is shorter than the checkpoint")
    return hashlib.sha256(data).digest()


def load(directory: Path) -> Checkpoint | None:
    """The checkpoint as stored, None when there is none; Unusable when it does not decode."""
    index = directory / INDEX
    if os.path.lexists(index) and (os.path.islink(index) or not os.path.isdir(index)):
        raise Unusable("index is not a directory")
    try:
        fd = open_entry(directory / INDEX, CHECKPOINT, os.O_RDONLY, MAX_CHECKPOINT_BYTES)
    except FileNotFoundError:
        return None
    except (Damaged, NotADirectoryError) as exc:
        raise Unusable(str(exc)) from None
    try:
        return decode(os.pread(fd, MAX_CHECKPOINT_BYTES, 0))
    finally:
        os.close(fd)


def verify(directory: Path, fd: int, cp: Checkpoint) -> None:
    """Unusable unless `cp` describes the prefix of the open metrics.bin `fd` and the files
    it names hold at least what it says (their contents are checked when read: check_rows)."""
    st = os.fstat(fd)
    if (cp.dev, cp.ino) != (st.st_dev, st.st_ino):
        raise Unusable("metrics.bin was replaced")
    if cp.end > st.st_size:
        raise Unusable(
            f"metrics.bin is shorter ({st.st_size} bytes) than the checkpoint ({cp.end})"
        )
    if tail_digest(fd, cp.end) != cp.digest:
        raise Unusable("metrics.bin's bytes before the checkpoint changed")
    for k, info in enumerate(cp.names):
        _need(column_path(directory, k), info.rows * ROW.itemsize)
    _need(directory / INDEX / ANCHORS, cp.anchors * 8)


def _need(path: Path, size: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if size:
            raise Unusable(f"{path.name} is missing") from None
        return
    except OSError as exc:
        raise Unusable(f"{path.name} unusable ({exc.strerror})") from None
    if not os.path.isfile(path) or os.path.islink(path):
        raise Unusable(f"{path.name} is not a regular file")
    if st.st_size < size:
        raise Unusable(f"{path.name} is shorter ({st.st_size} bytes) than the checkpoint says")


def trusted(directory: Path, fd: int) -> tuple[Checkpoint | None, str | None]:
    """(the checkpoint if it may be trusted, why not when there is one that may not)."""
    try:
        cp = load(directory)
        if cp is not None:
            verify(directory, fd, cp)
        return cp, None
    except Unusable as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"


def save(directory: Path, cp: Checkpoint) -> None:
    """Write the checkpoint atomically. The experiment directory must exist: it is never made."""
    make_index(directory)
    write_file_atomic(directory / INDEX / CHECKPOINT, encode(cp))


def make_index(directory: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory / INDEX, DIR_MODE)  # FileNotFoundError when the experiment is gone
    if os.path.islink(directory / INDEX) or not os.path.isdir(directory / INDEX):
        raise Damaged("index is not a directory")


def remove(directory: Path) -> None:
    """Delete every sidecar (a damaged `index` entry included)."""
    path = directory / INDEX
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def open_append(path: Path, keep: int) -> int:
    """A sidecar file opened for appending after its first `keep` bytes (the rest cut)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | SAFE_FLAGS, FILE_MODE)
    try:
        os.ftruncate(fd, keep)
        os.lseek(fd, keep, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_rows(directory: Path, k: int, start: int, stop: int) -> Rows:
    """Rows [start, stop) of the k-th column."""
    fd = os.open(column_path(directory, k), os.O_RDONLY | SAFE_FLAGS)
    try:
        size = (stop - start) * ROW.itemsize
        data = os.pread(fd, size, start * ROW.itemsize)
    finally:
        os.close(fd)
    if len(data) != size:
        raise Unusable(f"{k}.col is shorter than the checkpoint says")
    return np.frombuffer(data, ROW)


CHECK_ROWS = 1 << 20
"""Rows read at a time (28 MiB)."""


def check_rows(directory: Path, k: int, info: NameInfo) -> None:
    """Unusable unless the column's first `info.rows` rows have the CRC the checkpoint holds."""
    crc = 0
    for start in range(0, info.rows, CHECK_ROWS):
        crc = zlib.crc32(
            read_rows(directory, k, start, min(info.rows, start + CHECK_ROWS)).tobytes(), crc
        )
    if crc != info.crc:
        raise Unusable(f"{k}.col does not match the checkpoint")


ANCHORS_CHECKED = -1
"""In a set of checked columns: the anchors were checked too."""


def anchor(directory: Path, cp: Checkpoint, checked: set[int], a: int) -> int:
    """The byte offset of record a * ANCHOR; the anchors are checked against the checkpoint
    the first time (Unusable)."""
    fd = os.open(directory / INDEX / ANCHORS, os.O_RDONLY | SAFE_FLAGS)
    try:
        if ANCHORS_CHECKED not in checked:
            data = os.pread(fd, cp.anchors * 8, 0)
            if len(data) != cp.anchors * 8 or zlib.crc32(data) != cp.anchors_crc:
                raise Unusable("anchors do not match the checkpoint")
            checked.add(ANCHORS_CHECKED)
        (offset,) = struct.unpack("<Q", os.pread(fd, 8, a * 8))
        return int(offset)
    finally:
        os.close(fd)


def audit(directory: Path, fd: int, valid_end: int) -> tuple[Checkpoint | None, str | None]:
    """For fsck and inspect, every byte checked: (the checkpoint, what is wrong with the
    sidecars); (None, None) when there are none."""
    if not os.path.lexists(directory / INDEX):
        return None, None
    try:
        cp = load(directory)
        if cp is None:
            raise Unusable("no checkpoint")
        verify(directory, fd, cp)
        if cp.end > valid_end:
            raise Unusable("the checkpoint covers more than the valid prefix")
        for k, info in enumerate(cp.names):
            check_rows(directory, k, info)
        if cp.anchors:
            anchor(directory, cp, set(), 0)
    except Unusable as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    return cp, None
