"""Run documents: `run.json` beside an experiment's metrics, and what listings know of
every experiment (meta.bin, run.json), cached.

- run.json is written whole and atomically (files.write_file_atomic, mode 0600) by
  one UPDATE_RUN at a time per experiment (a lock each), off the event loop.
- Reads never follow a symlink (entries.open_entry); a document that is not a regular
  file, over 64 KiB or not a valid document is *unreadable*: reported as null.
- The cache holds each experiment's document with the file's (inode, size, mtime,
  ctime) and is checked against a fresh stat before it is used; a large document is
  cached without `notes` and `output` (what filters never look at) and read again
  when a page shows it. It is charged to the store's CacheBudget. meta.bin, once
  readable, is cached for good, as the store does.
- Reported status: a stored `running` whose clock (heartbeat, creation, last append)
  is more than crash_after_s old is reported `crashed` (never written).
Event loop only, except the module functions, which worker threads run on values.
"""

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from fetchml.protocol import runs
from fetchml.protocol.records import Metadata

from .budget import CacheBudget
from .entries import Damaged, open_entry
from .errors import StorageFault
from .files import METRICS, list_commits, load_metadata, storage_error, write_file_atomic

RUN = "run.json"
SMALL_DOCUMENT = 4096
"""Documents larger than this are cached without `notes` and `output`."""
ENTRY_OVERHEAD = 256
"""Bytes charged per cached entry besides its document."""
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


@dataclass(frozen=True, slots=True)
class Row:
    """One experiment as listings see it: meta.bin (None when unreadable) and its
    document as reported (derived `crashed` applied)."""

    commit: str
    meta: Metadata | None
    loaded: Loaded
    doc: dict[str, Any] | None


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


def load_document(directory: Path, known: Loaded | None, full: bool = False) -> Loaded:
    """Worker: `known` when run.json has not changed since (and is whole, with `full`),
    else run.json read again."""
    try:
        stamp: Stamp | None = _stamp(os.stat(directory / RUN, follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        stamp = None
    except OSError:
        return read_document(directory)
    if known is not None and known.stamp == stamp and (known.full or not full):
        return known
    return ABSENT if stamp is None else read_document(directory)


def cached(loaded: Loaded) -> Loaded:
    """What the cache keeps of a document: a large one without notes and output."""
    if loaded.doc is None or loaded.size <= SMALL_DOCUMENT:
        return loaded
    doc = {k: v for k, v in loaded.doc.items() if k not in ("notes", "output")}
    return replace(loaded, doc=doc, full=False)


def write_document(directory: Path, doc: dict[str, Any]) -> Loaded:
    """Worker: run.json replaced whole (temp file, fsync, rename, fsync of the directory)."""
    path = directory / RUN
    write_file_atomic(path, runs.dumps(doc).encode())
    return Loaded(_stamp(os.stat(path, follow_symlinks=False)), doc)


def report(
    directory: Path, doc: dict[str, Any] | None, now: float, appended: float, crash_after_s: float
) -> dict[str, Any] | None:
    """The document as reported: a stored `running` whose clock is more than
    crash_after_s old is `crashed`. The last append is `appended` (this process's), else
    metrics.bin's mtime (stat only when it decides)."""
    if doc is None or doc["status"] != "running":
        return doc
    clock = max(doc["heartbeat_at"] or 0, doc["created_at"] or 0, appended)
    if now - clock <= crash_after_s:
        return doc
    with contextlib.suppress(OSError):
        clock = max(clock, os.stat(directory / METRICS, follow_symlinks=False).st_mtime)
    return doc if now - clock <= crash_after_s else doc | {"status": "crashed"}


def scan(
    base: Path,
    metas: dict[str, Metadata],
    docs: dict[str, Loaded],
    appended: dict[str, float],
    now: float,
    crash_after_s: float,
) -> list[Row]:
    """Worker: every experiment of the tree, its meta.bin (from `metas` when known) and
    its document (from `docs` when unchanged)."""
    rows = []
    for commit in list_commits(base):
        directory = base / commit
        meta = metas.get(commit)
        if meta is None:
            meta, _ = load_metadata(directory)
        loaded = load_document(directory, docs.get(commit))
        doc = report(directory, loaded.doc, now, appended.get(commit, 0.0), crash_after_s)
        rows.append(Row(commit, meta, loaded, doc))
    return rows


class RunStore:
    """Run documents of the experiment tree, and the listing cache. Event loop only."""

    def __init__(
        self,
        base: Path,
        budget: CacheBudget,
        crash_after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base = base
        self.budget = budget
        self.crash_after_s = crash_after_s
        self.clock = clock
        """The server clock (server times, the crash rule); tests may replace it."""
        self._docs: dict[str, Loaded] = {}
        self._metas: dict[str, Metadata] = {}
        self._appended: dict[str, float] = {}
        self._locks: dict[str, anyio.Lock] = {}

    def on_commit(self, commit: str, first: int, data: bytes, count: int) -> None:
        """Group commit's hook: the server clock of the experiment's last append."""
        self._appended[commit] = self.clock()

    def _keep(self, commit: str, loaded: Loaded) -> None:
        entry = cached(loaded)
        self._docs[commit] = entry
        size = min(entry.size, SMALL_DOCUMENT) if entry.full else SMALL_DOCUMENT
        self.budget.charge(("run", commit), size + ENTRY_OVERHEAD, lambda: self._drop(commit))

    def _drop(self, commit: str) -> bool:
        self._docs.pop(commit, None)
        return True

    def forget(self, commit: str) -> None:
        """The experiment is gone (pruned)."""
        self._drop(commit)
        self._metas.pop(commit, None)
        self._appended.pop(commit, None)
        self.budget.forget(("run", commit))

    def reported(self, commit: str, doc: dict[str, Any] | None) -> dict[str, Any] | None:
        appended = self._appended.get(commit, 0.0)
        return report(self.base / commit, doc, self.clock(), appended, self.crash_after_s)

    async def load(self, commit: str, full: bool = True) -> Loaded:
        """run.json now (through the cache)."""
        known = self._docs.get(commit)
        loaded = await anyio.to_thread.run_sync(load_document, self.base / commit, known, full)
        if loaded is not known:
            self._keep(commit, loaded)
        return loaded

    async def document(self, commit: str) -> dict[str, Any] | None:
        """The document as reported; None without one or when unreadable."""
        return self.reported(commit, (await self.load(commit)).doc)

    async def update(self, commit: str, patch: dict[str, Any], default_name: str) -> dict[str, Any]:
        """Apply UPDATE_RUN's patch (after the previous one on this experiment), write the
        document and return it as reported. Nothing changes on any error."""
        lock = self._locks.setdefault(commit, anyio.Lock())
        try:
            async with lock:
                loaded = await self.load(commit)
                if loaded.unreadable:
                    raise StorageFault(UNREADABLE)
                doc = runs.apply_patch(
                    loaded.doc, patch, default_name=default_name, now=int(self.clock())
                )
                try:
                    written = await anyio.to_thread.run_sync(
                        write_document, self.base / commit, doc
                    )
                except OSError as exc:
                    raise storage_error(exc) from exc
                self._keep(commit, written)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(commit, None)
        reported = self.reported(commit, written.doc)
        assert reported is not None
        return reported

    async def rows(self) -> list[Row]:
        """Every experiment of the tree with its meta.bin and reported document (one
        worker pass; only what changed is read)."""
        docs, metas, appended = dict(self._docs), dict(self._metas), dict(self._appended)
        now = self.clock()
        found = await anyio.to_thread.run_sync(
            scan, self.base, metas, docs, appended, now, self.crash_after_s
        )
        present = set()
        for row in found:
            present.add(row.commit)
            if row.meta is not None and row.commit not in self._metas:
                self._metas[row.commit] = row.meta
            if row.loaded is not docs.get(row.commit) and self._docs.get(row.commit) is docs.get(
                row.commit
            ):
                self._keep(row.commit, row.loaded)
        for commit in (self._docs.keys() | self._metas.keys()) - present:
            self.forget(commit)
        return found

    async def whole(self, rows: list[Row]) -> list[Row]:
        """`rows` with every document whole (large ones are read again)."""
        out = []
        for row in rows:
            if row.loaded.full:
                out.append(row)
                continue
            loaded = await self.load(row.commit, full=True)
            out.append(replace(row, loaded=loaded, doc=self.reported(row.commit, loaded.doc)))
        return out
