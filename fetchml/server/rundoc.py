"""run.json, one experiment's run document, as files: read (never through a symlink,
only a regular file of at most 64 KiB), checked against what is known by its stat,
written whole and atomically (files.write_file_atomic: temporary file, fsync, rename,
fsync of the directory; mode 0600; an update under the experiment's flock), and
reported with the derived `crashed`. Plain blocking functions on values, run in worker
threads (the stat-only ones on the event loop too).
"""

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fetchml.protocol import runs

from . import exlock
from .entries import Damaged, open_entry
from .errors import StorageFault
from .files import METRICS, write_file_atomic

RUN = "run.json"
SMALL_DOCUMENT = 4096
"""Documents larger than this are cached without `notes` and `output`."""
UNREADABLE = "run document unreadable"

Stamp = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Loaded:
    """What is known of one run.json."""

    stamp: Stamp | None
    """(inode, size, mtime_ns, ctime_ns) when read; None when there is no file."""
    doc: dict[str, Any] | None
    """The document (None: no file, or unreadable)."""
    unreadable: bool = False
    full: bool = True
    """False: `notes` and `output` were left out (a large document, cached)."""

    @property
    def size(self) -> int:
        return self.stamp[1] if self.stamp else 0


ABSENT = Loaded(None, None)


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_document(directory: Path) -> Loaded:
    """Worker: run.json read now."""
    try:
        fd = open_entry(directory, RUN, os.O_RDONLY, runs.MAX_DOCUMENT_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return ABSENT
    except (Damaged, OSError):
        try:
            return Loaded(_stamp(os.stat(directory / RUN, follow_symlinks=False)), None, True)
        except OSError:
            return Loaded((0, 0, 0, 0), None, True)
    try:
        stamp = _stamp(os.fstat(fd))
        raw = os.read(fd, runs.MAX_DOCUMENT_BYTES + 1)
    except OSError:
        return Loaded((0, 0, 0, 0), None, True)
    finally:
        os.close(fd)
    doc = runs.load_document(raw)
    return Loaded(stamp, doc, doc is None)


def load_document(directory: str | Path, known: Loaded | None, full: bool = False) -> Loaded:
    """Worker: `known` when run.json has not changed since (and is whole, with `full`),
    else run.json read again."""
    try:
        stamp: Stamp | None = _stamp(os.stat(f"{directory}/{RUN}", follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        stamp = None
    except OSError:
        return read_document(Path(directory))
    if known is not None and known.stamp == stamp and (known.full or not full):
        return known
    return ABSENT if stamp is None else read_document(Path(directory))


def cached(loaded: Loaded) -> Loaded:
    """What the cache keeps of a document: a large one without notes and output."""
    if loaded.doc is None or not loaded.full or loaded.size <= SMALL_DOCUMENT:
        return loaded
    doc = {k: v for k, v in loaded.doc.items() if k not in ("notes", "output")}
    return replace(loaded, doc=doc, full=False)


def write_document(directory: Path, doc: dict[str, Any]) -> Loaded:
    """Worker: run.json replaced whole (temp file, fsync, rename, fsync of the directory)."""
    path = directory / RUN
    write_file_atomic(path, runs.dumps(doc).encode())
    return Loaded(_stamp(os.stat(path, follow_symlinks=False)), doc)


def update_document(directory: Path, patch: dict[str, Any], default_name: str, now: int) -> Loaded:
    """Worker: UPDATE_RUN under the experiment's flock (exlock.held), so that concurrent
    updates by several processes all land: run.json read now, the patch applied, the
    document written whole. NotFound when the experiment is gone."""
    with exlock.held(directory):
        loaded = read_document(directory)
        if loaded.unreadable:
            raise StorageFault(UNREADABLE)
        doc = runs.apply_patch(loaded.doc, patch, default_name=default_name, now=now)
        return write_document(directory, doc)


def metrics_mtime(directory: str | Path) -> float:
    """When metrics.bin was last written (0 without one): the last append before this
    process started."""
    try:
        return os.stat(f"{directory}/{METRICS}", follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def report(
    doc: dict[str, Any] | None, now: float, last_append: float, crash_after_s: float
) -> dict[str, Any] | None:
    """The document as reported: a stored `running` whose clock (heartbeat, creation,
    last append) is more than crash_after_s old is `crashed`."""
    if doc is None or doc["status"] != "running":
        return doc
    clock = max(doc["heartbeat_at"] or 0, doc["created_at"] or 0, last_append)
    return doc if now - clock <= crash_after_s else doc | {"status": "crashed"}
