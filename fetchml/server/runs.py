"""Run documents in the daemon: UPDATE_RUN's merge, and what listings know of every
experiment (meta.bin, run.json), cached. The files themselves: rundoc.py.

- run.json is written by one UPDATE_RUN at a time per experiment (a lock each, and
  the experiment's flock across processes: rundoc.update_document), off the event
  loop; a document that is not a regular file, over 64 KiB or not a valid document is
  *unreadable*: reported as null.
- The cache holds one Row per experiment: its document with the file's (inode, size,
  mtime, ctime), checked against a fresh stat before a single document is used, by
  listings at most every RECHECK_S, and for the rows a page serves. A large document
  is cached without `notes` and `output` (what filters never look at) and read again
  when served. It is charged to the store's CacheBudget. meta.bin, once readable, is
  cached for good, as the store does.
- Reported status: a stored `running` whose clock (heartbeat, creation, last append)
  is more than crash_after_s old is reported `crashed` (never written). The last append
  is this process's, or metrics.bin's mtime when later (another process's appends keep
  a run alive): looked at before a run is reported crashed.
Event loop only, except the module functions, which worker threads run on values.
"""

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from fetchml.protocol.records import Metadata

from .budget import CacheBudget
from .files import list_commits, load_metadata, storage_error
from .rundoc import (
    ABSENT,
    RUN,
    SMALL_DOCUMENT,
    Loaded,
    Stamp,
    cached,
    load_document,
    metrics_mtime,
    read_document,
    report,
    update_document,
)

ENTRY_OVERHEAD = 256
"""Bytes charged per cached entry besides its document."""
RECHECK_S = 1.0
"""Listings check every run.json against the cache at most this often; in between,
only what this daemon wrote is new to them (and the rows of a page are checked)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One experiment as listings see it: meta.bin (None when unreadable) and its
    document as reported (derived `crashed` applied)."""

    commit: str
    meta: Metadata | None
    loaded: Loaded
    doc: dict[str, Any] | None
    last_append: float | None = None
    path: str = ""
    """run.json's path."""

    until: float = math.inf
    """A stored `running` is reported as it is until then (then `crashed`)."""

    def stands(self, stamp: Stamp | None, now: float, appended: dict[str, float]) -> bool:
        """Whether the row is still what a scan would make: run.json unchanged, meta.bin
        readable, and for a stored `running`, no append since and the same side of its
        crash time."""
        if self.loaded.stamp != stamp or self.meta is None:
            return False
        doc = self.loaded.doc
        if doc is None or doc["status"] != "running":
            return True
        last = self.last_append
        return (
            last is not None
            and appended.get(self.commit) == last
            and (now < self.until) == (self.doc is doc)
        )


Listing = tuple[int | None, list[str]]
"""The base directory's mtime (None: too recent to be trusted) and its experiments."""


def list_tree(base: Path, known: Listing | None) -> Listing:
    """Worker: the experiments of the tree; `known` while the directory's mtime says no
    entry was added, removed or renamed since. An mtime less than a second old is not
    trusted, since a change within the same clock tick would leave it as it is."""
    mtime = os.stat(base).st_mtime_ns
    if known is not None and known[0] == mtime:
        return known
    commits = list_commits(base)
    return (mtime if time.time_ns() - mtime > 1_000_000_000 else None), commits


def scan(
    base: Path,
    commits: list[str],
    metas: dict[str, Metadata],
    before: dict[str, Row],
    appended: dict[str, float],
    now: float,
    crash_after_s: float,
    check: bool = True,
) -> list[Row]:
    """Worker: each experiment's meta.bin (from `metas` when known) and document (the
    row `before` while run.json has not changed; without `check`, the row `before` is
    taken as current); the last append of a `running` one not in `appended` is
    metrics.bin's mtime, returned in its row. One stat per experiment with `check`."""
    rows = []
    root = os.fspath(base)
    stat = os.stat
    for commit in commits:
        old = before.get(commit)
        path = old.path if old is not None else f"{root}/{commit}/{RUN}"
        stamp: Stamp | None
        if old is not None and not check:
            stamp = old.loaded.stamp
        else:
            try:
                st = stat(path, follow_symlinks=False)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            except (FileNotFoundError, NotADirectoryError):
                stamp = None
            except OSError:
                stamp = (0, 0, 0, 0)
        if old is not None and old.stands(stamp, now, appended):
            rows.append(old)
            continue
        directory = f"{root}/{commit}"
        meta = metas.get(commit)
        if meta is None:
            meta, _ = load_metadata(Path(directory))
        if old is not None and old.loaded.stamp == stamp and stamp != (0, 0, 0, 0):
            loaded = old.loaded
        else:
            loaded = ABSENT if stamp is None else cached(read_document(Path(directory)))
        doc = loaded.doc
        last = appended.get(commit)
        until = math.inf
        if doc is not None and doc["status"] == "running":
            clock = max(doc["heartbeat_at"] or 0, doc["created_at"] or 0)
            if last is None or max(clock, last) + crash_after_s < now:  # appended elsewhere?
                last = max(last or 0.0, metrics_mtime(directory))
            until = max(clock, last) + crash_after_s
            doc = report(doc, now, last, crash_after_s)
        rows.append(Row(commit, meta, loaded, doc, last, path, until))
    return rows


class RunStore:
    """Run documents of the experiment tree: one cached Row per experiment, for listings
    and for single documents alike. Event loop only."""

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
        self._rows: dict[str, Row] = {}
        self._metas: dict[str, Metadata] = {}
        """meta.bin once readable (it is written once)."""
        self._appended: dict[str, float] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._listing: Listing | None = None
        self._checked = -math.inf
        """When (monotonic) a listing last checked every run.json."""
        self.recheck_s = RECHECK_S

    def on_commit(self, commit: str, first: int, data: bytes, count: int) -> None:
        """Group commit's hook: the server clock of the experiment's last append."""
        self._appended[commit] = self.clock()

    def _keep(self, row: Row) -> None:
        """Cache a row whose document is new, and charge it to the budget."""
        commit = row.commit
        self._rows[commit] = row
        if row.meta is not None:
            self._metas.setdefault(commit, row.meta)
        entry = row.loaded
        size = min(entry.size, SMALL_DOCUMENT) if entry.full else SMALL_DOCUMENT
        self.budget.charge(("run", commit), size + ENTRY_OVERHEAD, lambda: self._drop(commit))

    def _drop(self, commit: str) -> bool:
        self._rows.pop(commit, None)
        return True

    def know(self, metas: dict[str, Metadata]) -> None:
        """meta.bin of experiments as the store's listing just read them (not read again)."""
        for commit, meta in metas.items():
            self._metas.setdefault(commit, meta)

    def forget(self, commit: str) -> None:
        """The experiment is gone (pruned)."""
        self._drop(commit)
        self._metas.pop(commit, None)
        self._appended.pop(commit, None)
        self.budget.forget(("run", commit))

    def last_append(self, commit: str, fresh: bool = False) -> float:
        """The server clock of the experiment's last append: tracked from group commit, or
        metrics.bin's mtime when that is later (what came before this process, or from
        another one), looked at when nothing is tracked or `fresh`."""
        last = self._appended.get(commit)
        if last is None or fresh:
            last = self._appended[commit] = max(last or 0.0, metrics_mtime(self.base / commit))
        return last

    def reported(self, commit: str, doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None or doc["status"] != "running":
            return doc
        now = self.clock()
        out = report(doc, now, self.last_append(commit), self.crash_after_s)
        if out is not doc:  # crashed, unless another process appended since: the file says
            out = report(doc, now, self.last_append(commit, True), self.crash_after_s)
        return out

    def _store(self, commit: str, loaded: Loaded) -> None:
        entry = cached(loaded)
        path = f"{self.base}/{commit}/{RUN}"
        self._keep(Row(commit, self._metas.get(commit), entry, entry.doc, path=path))

    async def load(self, commit: str, full: bool = True) -> Loaded:
        """run.json now (through the cache)."""
        row = self._rows.get(commit)
        known = row.loaded if row else None
        loaded = await anyio.to_thread.run_sync(load_document, self.base / commit, known, full)
        if loaded is not known:
            self._store(commit, loaded)
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
                work = partial(
                    update_document, self.base / commit, patch, default_name, int(self.clock())
                )
                try:
                    written = await anyio.to_thread.run_sync(work)
                except OSError as exc:
                    raise storage_error(exc) from exc
                self._store(commit, written)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(commit, None)
        reported = self.reported(commit, written.doc)
        assert reported is not None
        return reported

    async def rows(self, commits: list[str] | None = None) -> list[Row]:
        """Every experiment of the tree with its meta.bin and reported document, in one
        worker pass that reads only what changed. Every run.json is checked against the
        cache at most every `recheck_s`; `current` checks the rows a page serves. A row
        that a concurrent UPDATE_RUN outdates is cached anyway: its stamp no longer
        matches, so it is read again. With `commits`, only theirs, each checked now."""
        whole = commits is None
        if commits is None:
            self._listing = await anyio.to_thread.run_sync(list_tree, self.base, self._listing)
            commits = self._listing[1]
        before, appended = dict(self._rows), dict(self._appended)
        check = not whole or time.monotonic() - self._checked >= self.recheck_s
        if check and whole:
            self._checked = time.monotonic()
        found = await anyio.to_thread.run_sync(
            scan,
            self.base,
            commits,
            self._metas.copy(),
            before,
            appended,
            self.clock(),
            self.crash_after_s,
            check,
        )
        for row in found:
            old = before.get(row.commit)
            if row is old:
                continue
            if row.last_append is not None and row.last_append > self._appended.get(
                row.commit, -math.inf
            ):
                self._appended[row.commit] = row.last_append
            if old is None or row.loaded is not old.loaded or row.meta is not old.meta:
                self._keep(row)
            else:
                self._rows[row.commit] = row
        if whole and (len(self._rows) > len(found) or len(self._metas) > len(found)):
            for commit in (self._rows.keys() | self._metas.keys()) - set(commits):
                self.forget(commit)
        return found

    async def current(self, rows: list[Row]) -> list[Row]:
        """The rows a page serves, each checked against its run.json now and whole (a
        large document is read again), in one worker pass."""

        def check() -> list[Loaded]:
            return [load_document(self.base / row.commit, row.loaded, True) for row in rows]

        out = []
        for row, loaded in zip(rows, await anyio.to_thread.run_sync(check), strict=True):
            if loaded is not row.loaded:
                self._store(row.commit, loaded)
                row = replace(row, loaded=loaded, doc=self.reported(row.commit, loaded.doc))
            out.append(row)
        return out
