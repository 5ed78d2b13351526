"""Files of the experiment tree: paths, atomic writes, the valid-prefix scan, torn tails.

Plain synchronous functions, run in worker threads by the store and directly
by the operator commands (inspect, fsck).
"""

import contextlib
import errno
import fcntl
import logging
import os
import re
import time
from array import array
from pathlib import Path
from typing import NamedTuple

from fetchml.protocol.errors import MalformedRecord
from fetchml.protocol.metrics import scan, walk
from fetchml.protocol.records import Metadata, decode_metadata

from .entries import FILE_MODE as FILE_MODE
from .entries import SAFE_FLAGS, Damaged, check, open_dir, open_entry, open_regular
from .errors import DiskFull, NotFound, ServerError, StorageFault

logger = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
MAX_TORN_BYTES = 8 << 20
"""A remainder up to this size after the valid prefix is a torn tail; larger is corruption."""
DIR_MODE = 0o750
READ_CHUNK = 4 << 20
META = "meta.bin"
METRICS = "metrics.bin"
META_MAX_BYTES = 1024
"""meta.bin holds a version, a timestamp and three short strings; a larger one is damaged."""
UNREADABLE = "metadata unreadable"


def check_commit(commit: str) -> str:
    """A commit's directory name: exactly 40 lowercase hex characters."""
    if not COMMIT_RE.match(commit):
        raise NotFound(f"invalid commit id {commit[:64]!r}")
    return commit


def damage(directory: Path) -> str | None:
    """Why an experiment directory, its meta.bin or its metrics.bin is not what belongs
    there (every reason, joined by "; "), None when all are. Nothing but the directory is
    opened: the files are looked at with lstat."""
    try:
        dir_fd = open_dir(directory)
    except Damaged as exc:
        return exc.message
    except FileNotFoundError:  # gone meanwhile: nothing there is damaged
        return None
    except OSError as exc:
        return f"experiment directory is unusable ({exc.strerror})"
    reasons = []
    try:
        for name, limit in ((META, META_MAX_BYTES), (METRICS, 0)):
            try:
                check(name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False), limit)
            except FileNotFoundError:
                continue
            except Damaged as exc:
                reasons.append(exc.message)
            except OSError as exc:
                reasons.append(f"{name} is unusable ({exc.strerror})")
    finally:
        os.close(dir_fd)
    return "; ".join(reasons) or None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: old or new, never half. Only a
    regular file is replaced, and never through a symlinked directory (Damaged)."""
    if os.path.islink(path.parent):
        raise Damaged("experiment directory is a symlink")
    with contextlib.suppress(FileNotFoundError):
        check(path.name, os.lstat(path), 0)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | SAFE_FLAGS, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FileScan(NamedTuple):
    end: int
    """Bytes in the valid prefix."""
    records: int
    size: int
    """Bytes in the file when scanned."""


def scan_file(
    fd: int, start: int = 0, count: int = 0, offsets: "array[int] | None" = None
) -> FileScan:
    """Find the valid prefix of an open metrics file, resuming at a known record boundary."""
    size = os.fstat(fd).st_size
    pos = start
    carry = b""
    while True:
        chunk = os.pread(fd, READ_CHUNK, pos + len(carry)) if pos + len(carry) < size else b""
        buf = carry + chunk
        result = scan(buf)
        if offsets is not None:
            walk(buf, offsets, pos, 0, result.end)
        count += result.records
        pos += result.end
        carry = buf[result.end :]
        if not (result.incomplete and chunk):
            return FileScan(pos, count, size)


def index_records(fd: int, start: int, end: int, offsets: "array[int]") -> None:
    """Append the start of each record in `[start, end)`, a stretch of the valid prefix
    beginning at a record boundary, then `end`. Lengths only: it is already validated."""
    pos = start
    while pos < end:
        buf = os.pread(fd, min(READ_CHUNK, end - pos), pos)
        i = walk(buf, offsets, pos)
        if i == 0:
            raise OSError(errno.EIO, f"short read indexing records at offset {pos}")
        pos += i
    offsets.append(pos)


def torn_copy_path(metrics: Path) -> Path:
    stem = f"{metrics.name}.torn-{int(time.time())}"
    candidate = metrics.with_name(stem)
    n = 2
    while os.path.lexists(candidate):
        candidate = metrics.with_name(f"{stem}-{n}")
        n += 1
    return candidate


def cut_tail(fd: int, metrics: Path, end: int, size: int) -> Path:
    """Copy bytes past `end` beside the file, then truncate to `end` and fsync."""
    removed = os.pread(fd, size - end, end)
    copy = torn_copy_path(metrics)
    cfd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | SAFE_FLAGS, FILE_MODE)
    try:
        write_all(cfd, removed)
        os.fsync(cfd)
    except BaseException:
        copy.unlink(missing_ok=True)  # no half copy beside the file
        raise
    finally:
        os.close(cfd)
    os.ftruncate(fd, end)
    os.fsync(fd)
    fsync_dir(metrics.parent)
    return copy


def list_commits(base: Path) -> list[str]:
    """Experiments: every entry named with exactly 40 lowercase hex characters, sorted;
    one that is not a directory (or is a symlink) is there to be reported as damaged."""
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if COMMIT_RE.match(e.name))


def read_metadata(path: Path) -> Metadata | None:
    """meta.bin of an experiment directory, None when missing, damaged or undecodable."""
    try:
        fd = open_entry(path, META, os.O_RDONLY, META_MAX_BYTES)
    except (OSError, Damaged):
        return None
    try:
        return decode_metadata(os.read(fd, META_MAX_BYTES))
    except (OSError, MalformedRecord):
        return None
    finally:
        os.close(fd)


def load_metadata(path: Path) -> tuple[Metadata | None, str | None]:
    """(meta.bin, why the experiment is damaged). A damaged experiment has no metadata,
    so no owner; a meta.bin that is missing or does not decode is "metadata unreadable"."""
    reason = damage(path)
    meta = None if reason else read_metadata(path)
    return meta, reason or (None if meta else UNREADABLE)


def storage_error(exc: OSError) -> ServerError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull("disk full")
    if isinstance(exc, FileNotFoundError):
        return NotFound("experiment not found")
    return StorageFault("storage error")


class DataDirBusy(Exception):
    """Another process holds the data directory (or its lock file is damaged)."""


def lock_data_dir(base: Path, shared: bool = False) -> int:
    """One standalone daemon per data directory (an exclusive flock): a second one fails
    at start, naming the first. Cluster nodes share the directory (`shared`: a shared
    flock), so a standalone daemon or `fsck --repair` cannot start beside them, nor they
    beside one."""
    base.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        fd = open_regular(base / ".fetchml-server.lock", os.O_RDWR | os.O_CREAT)
    except Damaged as exc:
        raise DataDirBusy(f"{base} cannot be locked: {exc.message}") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if shared:
            raise DataDirBusy(
                f"{base} is in use by a standalone fetchml-server or fsck (pid {holder})"
            ) from None
        raise DataDirBusy(f"{base} is in use by another fetchml-server (pid {holder})") from None
    if not shared:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
