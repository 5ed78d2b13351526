"""One experiment's metrics file: what is known of it (a frozen FileState), its
lifecycle (a Phase), and the blocking steps that create, open, write and rescan it.

Who may touch what:
- The event loop owns every Experiment: only it assigns `state`, `phase`, `fd`
  and `meta`, and only through `Experiment.settle` (`meta` directly).
- A worker thread gets values, never the Experiment: the functions below take a
  FileState (and a descriptor or a path) and return a new FileState, which the
  event loop then settles. They are plain blocking code; small writes in
  durability `write` run them on the event loop itself.
- `Experiment.lock` is held around every worker step that opens, writes or
  rescans the file, so one step at a time builds on the state it was given.
- The offset index (offsets.py) is the one thing a worker extends in place, while
  the event loop holds the index's lock for it.
"""

import contextlib
import enum
import errno
import fcntl
import functools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from fetchml.protocol.records import Metadata, encode_metadata

from . import exlock, files
from .entries import open_entry
from .errors import AlreadyExists, NotFound
from .files import (
    DIR_MODE,
    MAX_TORN_BYTES,
    META,
    METRICS,
    cut_tail,
    fsync_dir,
    scan_file,
    storage_error,
    write_file_atomic,
)
from .groupcommit import Queue
from .indexer import UNINDEXABLE, resume
from .offsets import OffsetIndex
from .sidecar import Checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileState:
    """What is known of a metrics file's valid prefix."""

    end: int = 0
    """Bytes in the valid prefix."""
    count: int = 0
    """Records in the valid prefix."""
    size: int = 0
    """File size when last looked at."""
    epoch: int = 0
    """Counts the times the prefix was scanned again from the start: an offset index
    built in another epoch is stale."""

    @property
    def corrupt(self) -> bool:
        """More after the valid prefix than a torn tail can be: appends are refused and
        only fsck --repair cuts it."""
        return self.size - self.end > MAX_TORN_BYTES

    def restart(self) -> "FileState":
        """Nothing known any more (the file shrank or was corrupt): scan from the start."""
        return FileState(epoch=self.epoch + 1)


class Phase(enum.Enum):
    UNSCANNED = "unscanned"
    """Nothing known of metrics.bin yet."""
    KNOWN = "known"
    """Its valid prefix is known; no descriptor: reads look at the size first."""
    OPEN = "open"
    """Open for appending: this process's writes keep the state current."""
    CORRUPT = "corrupt"
    """Appends refused until the file changes (fsck --repair); reads get the prefix."""
    REMOVED = "removed"
    """Pruned: the object no longer stands for the directory."""


@dataclass(frozen=True, slots=True)
class MetaInfo:
    meta: Metadata | None
    damaged: str | None
    """Why `meta` is None: a damaged entry, or "metadata unreadable" (files.load_metadata)."""


@dataclass(eq=False)
class Experiment:
    """What the store knows of one experiment directory. Event loop only."""

    commit: str
    path: Path
    state: FileState = FileState()
    phase: Phase = Phase.UNSCANNED
    fd: int | None = None
    """Append descriptor, open in phase OPEN only."""
    meta: MetaInfo | None = None
    """None until meta.bin is loaded."""
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    """Held while a worker opens, writes or rescans the file."""
    index: OffsetIndex = field(default_factory=OffsetIndex)
    queue: Queue = field(default_factory=Queue)
    """Appends waiting for group commit, and the batch being written."""
    sidecar: Checkpoint | None = None
    """The last checkpoint of the sidecars written or trusted (sidecar.py)."""
    sidecar_lock: anyio.Lock = field(default_factory=anyio.Lock)
    """Held while a worker writes the sidecars, or a reader relies on them; inside `lock`
    when both are held."""
    checked: set[int] = field(default_factory=set)
    """Columns of `sidecar` whose rows were checked or written by this process."""
    no_sidecars: bool = False
    """Writing them failed (logged): reads use metrics.bin alone."""

    @functools.cached_property
    def metrics_path(self) -> Path:
        """Made once: every append passes it."""
        return self.path / METRICS

    @property
    def busy(self) -> bool:
        return (
            self.queue.busy
            or self.lock.locked()
            or self.index.lock.locked()
            or self.sidecar_lock.locked()
        )

    def trust(self, cp: Checkpoint | None) -> None:
        """Keep what a worker found of the sidecars (UNINDEXABLE: none are written for it
        while this object stands for the experiment)."""
        if cp is UNINDEXABLE:
            self.no_sidecars, cp = True, None
        if (
            cp is None
            or self.sidecar is None
            or (cp.dev, cp.ino)
            != (
                self.sidecar.dev,
                self.sidecar.ino,
            )
        ):
            self.checked = set()
        self.sidecar = cp

    def settle(self, state: FileState, fd: int | None, *, removed: bool = False) -> None:
        """The one place that changes the state and the phase. A descriptor is kept only
        while the file may be appended to (not corrupt, not removed)."""
        removed = removed or self.phase is Phase.REMOVED
        keep = None if removed or state.corrupt else fd
        for old in {self.fd, fd} - {keep}:
            if old is not None:
                os.close(old)
        self.state, self.fd = state, keep
        if removed:
            self.phase = Phase.REMOVED
        elif state.corrupt:
            self.phase = Phase.CORRUPT
        else:
            self.phase = Phase.KNOWN if keep is None else Phase.OPEN

    def close(self) -> None:
        self.settle(self.state, None)

    def remove(self) -> None:
        """Pruned: the descriptor is closed now, or by the `settle` that ends a worker step
        holding `lock` (which may be using it)."""
        if self.lock.locked():
            self.phase = Phase.REMOVED
        else:
            self.settle(self.state, None, removed=True)


# -- worker steps: values in, a new FileState out ---------------------------------------


def create(base: Path, final: Path, meta: Metadata) -> None:
    """Make the directory, files/ and meta.bin under a temporary name, then rename it."""
    tmp = base / f".create-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        tmp.mkdir(mode=DIR_MODE)
        (tmp / "files").mkdir(mode=DIR_MODE)
        write_file_atomic(tmp / META, encode_metadata(meta))
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise AlreadyExists(f"experiment {final.name} already exists") from None
            raise
        fsync_dir(base)
    except OSError as exc:
        raise storage_error(exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def open_for_append(
    path: Path, commit: str, state: FileState, cp: Checkpoint | None, index_bytes: int
) -> tuple[int | None, FileState, Checkpoint | None]:
    """Open (creating it if missing), recover a torn tail, check the rest. Resumes after a
    prefix already known valid (or a trusted checkpoint of the sidecars, which it extends:
    indexer.resume); a corrupt file that has not changed is not scanned again. The
    descriptor is None when the file is corrupt."""
    metrics = path / METRICS
    created = not os.path.lexists(metrics)
    try:
        fd = open_entry(path, METRICS, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    except FileNotFoundError:
        raise NotFound(f"experiment {commit} not found") from None
    try:
        if created:
            fsync_dir(path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = exlock.check_same(fd, metrics).st_size  # not pruned since opened
            if state.corrupt and size == state.size:
                new = state
            else:
                start = state if size >= state.end else state.restart()
                new, cp = recover(fd, metrics, start, cp, index_bytes)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)
        raise
    if new.corrupt:
        os.close(fd)
        return None, new, cp
    return fd, new, cp


def recover(
    fd: int,
    metrics: Path,
    state: FileState,
    cp: Checkpoint | None = None,
    index_bytes: int = -1,
) -> tuple[FileState, Checkpoint | None]:
    """Scan on from `state`; cut a torn tail (keeping a copy). A larger remainder is
    corruption: logged, left alone. With `index_bytes` >= 0, with the sidecars' help
    (indexer.resume)."""
    if state.corrupt:
        state = state.restart()
    if index_bytes < 0:
        result = scan_file(fd, state.end, state.count)
    else:
        result, cp = resume(metrics.parent, fd, state.end, state.count, cp, index_bytes)
    new = FileState(result.end, result.records, result.size, state.epoch)
    remainder = result.size - result.end
    if new.corrupt:
        logger.error(
            "%s: %d unparseable bytes after the valid prefix (%d records): "
            "corrupt, appends refused; run fetchml-server fsck",
            metrics,
            remainder,
            result.records,
        )
    elif remainder:
        copy = cut_tail(fd, metrics, result.end, result.size)
        new = FileState(result.end, result.records, result.end, state.epoch)
        logger.warning(
            "recovered %s: cut a torn tail of %d bytes after %d records (copy: %s)",
            metrics,
            remainder,
            result.records,
            copy.name,
        )
    return new, cp


def append(
    fd: int,
    metrics: Path,
    state: FileState,
    data: bytes,
    count: int,
    fsync: bool,
    wait: bool,
    shared: bool = False,
) -> FileState | None:
    """Lock, check the file's end (and with `shared`, that the path still names the file:
    NotFound when another process pruned or replaced it), write, sync. The new state holds
    the records at its end; a corrupt one (found on the way) means nothing was written.
    None when `wait` is False and another process holds the file lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    try:
        size = exlock.check_same(fd, metrics).st_size if shared else os.lseek(fd, 0, os.SEEK_END)
        if size != state.end:  # another writer, or a failed partial write
            if size < state.end:
                logger.error("%s shrank to %d bytes under us; rescanning", metrics, size)
                state = state.restart()
            state, _ = recover(fd, metrics, state)
            if state.corrupt:
                return state
        try:
            files.write_all(fd, data)
            if fsync:
                os.fdatasync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, state.end)  # nothing of a failed write stays
            raise
        end = state.end + len(data)
        return FileState(end, state.count + count, end, state.epoch)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def refresh(
    path: Path,
    state: FileState,
    known: bool,
    cp: Checkpoint | None = None,
    index_bytes: int = 0,
    shared: bool = False,
) -> tuple[FileState, Checkpoint | None]:
    """Read-only on metrics.bin: extend what is known of a file written by someone else
    (or nobody), with the sidecars' help (indexer.resume; with `shared`, sidecars are
    written under the experiment's flock)."""
    try:
        fd = open_entry(path, METRICS, os.O_RDONLY)
    except FileNotFoundError:  # nothing, or nothing any more
        return (state.restart() if state.size else state), None
    try:
        size = os.fstat(fd).st_size
        if known and size == state.size and size - (cp.end if cp else 0) < (index_bytes or 1 << 62):
            return state, cp
        if size < state.end:
            state = state.restart()
        indexing = shared and index_bytes and size - (cp.end if cp else 0) >= index_bytes
        with exlock.held(path) if indexing else contextlib.nullcontext():
            result, cp = resume(path, fd, state.end, state.count, cp, index_bytes)
        return FileState(result.end, result.records, size, state.epoch), cp
    finally:
        os.close(fd)


def read_prefix(path: Path, end: int) -> bytes:
    fd = open_entry(path, METRICS, os.O_RDONLY)
    try:
        return os.pread(fd, end, 0)
    finally:
        os.close(fd)
