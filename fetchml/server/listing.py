"""Listing the experiment tree: one experiment's line, the order of the list, and what a
prune selects. `list_unheld` runs in a worker thread: it takes what is known of the
file and returns what is known now, for the event loop to keep.
"""

import logging
import os
import stat as stat_module
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from fetchml.protocol import shapes
from fetchml.protocol.records import Metadata
from fetchml.protocol.runs import RunFilter

from . import sidecar
from .entries import Damaged, open_entry
from .experiment import FileState
from .files import METRICS, load_metadata, scan_file

if TYPE_CHECKING:
    from .runs import Row

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExperimentInfo:
    commit: str
    meta: Metadata | None
    """None when meta.bin is unreadable or the experiment damaged."""
    metrics_count: int
    damaged: str | None = None
    """Why `meta` is None: a damaged entry, or "metadata unreadable" (files.load_metadata)."""


class Unindexed(Exception):
    """The file has more not covered by sidecars than the store indexes on the way: the
    store opens the experiment to count it (and index it)."""


class Seen(NamedTuple):
    """An experiment directory's metadata as last read, and the directory's stat then
    (meta.bin is only ever replaced by a rename, which changes the directory's mtime);
    what was known of metrics.bin, and its inode, size and mtime then."""

    stat: tuple[int, int, int]
    meta: Metadata | None
    damaged: str | None
    metrics: tuple[int, int, int] | None = None
    state: FileState | None = None


SEEN_BYTES = 300
"""What a Seen costs in memory, about (charged to the cache budget)."""


class Listed(NamedTuple):
    info: ExperimentInfo | None
    """None when the experiment must be opened (Unindexed) or is gone."""
    state: FileState | None
    """What is known of its file now, None when nothing new."""
    seen: Seen | None


LOST = (0, 0, 0)
"""The stat of a Seen whose directory could not be read (an OSError other than absence)."""


def look_unheld(
    base: Path, commits: list[str], held: "Container[str]", seen: dict[str, Seen]
) -> tuple[dict[str, Seen], bool]:
    """Worker thread: the metadata of each experiment in `commits` not `held`, what was
    `seen` reused when a stat of its directory shows no change (those gone are left
    out, those held kept as they were); and whether anything differs from `seen`."""
    out: dict[str, Seen] = {}
    changed, reused = False, 0
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for commit in commits:
            old = seen.get(commit)
            if commit in held:  # kept as it was, for when it is no longer held
                if old is not None:
                    out[commit], reused = old, reused + 1
                continue
            now = _look(base, base_fd, commit, old)
            if now is None:
                continue
            if now is old:
                reused += 1
            else:
                changed = True
            out[commit] = now
    finally:
        os.close(base_fd)
    return out, changed or reused != len(seen)


def look_some(base: Path, commits: Iterable[str], seen: dict[str, Seen]) -> dict[str, Seen | None]:
    """Worker thread: the experiments of `commits` whose directory's stat differs from
    `seen` (new ones included), their metadata read again; None for those gone."""
    out: dict[str, Seen | None] = {}
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for commit in commits:
            old = seen.get(commit)
            now = _look(base, base_fd, commit, old)
            if now is not old:
                out[commit] = now
    finally:
        os.close(base_fd)
    return out


def _look(base: Path, base_fd: int, commit: str, old: Seen | None) -> Seen | None:
    """`old` while a stat of the experiment's directory shows no change, else what it is
    now (None when gone)."""
    try:
        st = os.stat(commit, dir_fd=base_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.error("listing %s: %s", commit, exc)
        return Seen(LOST, None, "storage error")
    stat = (st.st_mtime_ns, st.st_ino, st.st_mode)
    if old is not None and old.stat == stat:
        return old
    return Seen(stat, *load_metadata(base / commit))


def list_unheld(
    base: Path,
    wanted: list[tuple[str, FileState | None, Seen]],
    index_bytes: int,
    check: bool = False,
) -> list[Listed]:
    """Worker thread: the listings of experiments the store does not hold, their
    metadata as `look_unheld` found it (with `check`, as a stat of each directory finds
    it: a changed one is returned with its Seen). What was known of metrics.bin is used
    when a stat of it shows nothing changed."""
    out: list[Listed] = []
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for commit, known, old in wanted:
            seen = _look(base, base_fd, commit, old) if check else old
            if seen is None:
                out.append(Listed(None, None, None))
                continue
            if seen.stat == LOST:
                info = ExperimentInfo(commit, None, 0, seen.damaged)
                out.append(Listed(info, None, None if seen is old else seen))
                continue
            state = seen.state
            if state is not None and (known is None or known is state):  # the common case
                try:
                    mst = os.stat(f"{commit}/{METRICS}", dir_fd=base_fd, follow_symlinks=False)
                except OSError:
                    mst = None
                sig = None if mst is None else (mst.st_ino, mst.st_size, mst.st_mtime_ns)
                if sig is not None and sig == seen.metrics and sig[1] == state.size:
                    info = ExperimentInfo(commit, seen.meta, state.count, seen.damaged)
                    out.append(Listed(info, state, seen))
                    continue
            try:
                out.append(_list_one(base, base_fd, commit, known, seen, index_bytes))
            except (Unindexed, FileNotFoundError):
                out.append(Listed(None, None, None))
            except OSError as exc:
                logger.error("listing %s: %s", commit, exc)
                out.append(Listed(ExperimentInfo(commit, None, 0, "storage error"), None, None))
    finally:
        os.close(base_fd)
    return out


def _list_one(
    base: Path,
    base_fd: int,
    commit: str,
    known: FileState | None,
    seen: Seen,
    index_bytes: int,
) -> Listed:
    meta, damaged = seen.meta, seen.damaged
    try:
        mst = os.stat(f"{commit}/{METRICS}", dir_fd=base_fd, follow_symlinks=False)
        sig = (mst.st_ino, mst.st_size, mst.st_mtime_ns)
    except (FileNotFoundError, NotADirectoryError):  # none yet, or a damaged experiment
        mst, sig = None, None
    if mst is not None and stat_module.S_ISREG(mst.st_mode):
        if known is None and sig == seen.metrics:
            known = seen.state  # from a listing saved before this process
        if known is not None and mst.st_size == known.size:
            if sig != seen.metrics or known is not seen.state:
                seen = seen._replace(metrics=sig, state=known)
            return Listed(ExperimentInfo(commit, meta, known.count, damaged), known, seen)
    try:
        count, state = count_unheld(base, commit, known, index_bytes)
    except Damaged as exc:
        return Listed(ExperimentInfo(commit, None, 0, damaged or exc.message), None, seen)
    seen = seen._replace(metrics=sig, state=state or known)
    return Listed(ExperimentInfo(commit, meta, count, damaged), state, seen)


def count_unheld(
    base: Path, commit: str, known: FileState | None, index_bytes: int = 0
) -> tuple[int, FileState | None]:
    """Records in the valid prefix, from what is known or a trusted checkpoint of the
    sidecars onwards; Unindexed when that leaves `index_bytes` (> 0) or more to read."""
    try:
        fd = open_entry(base / commit, METRICS, os.O_RDONLY)
    except FileNotFoundError:
        return 0, None
    try:
        size = os.fstat(fd).st_size
        if known is not None and size == known.size:
            return known.count, None
        start = known if known is not None and size > known.end else FileState()
        if size - start.end >= (index_bytes or 1 << 62) or start.end == 0:
            cp, _ = sidecar.trusted(base / commit, fd)
            if cp is not None and cp.end > start.end:
                start = FileState(cp.end, cp.count, 0, start.epoch)
        if size - start.end >= (index_bytes or 1 << 62):
            raise Unindexed(commit)
        result = scan_file(fd, start.end, start.count)
        return result.records, FileState(result.end, result.records, size, start.epoch)
    finally:
        os.close(fd)


def select_prune(
    infos: list[tuple[str, Metadata]], kind: Literal["keep", "older"], value: int, now: float
) -> list[str]:
    if kind == "keep":
        ordered = sorted(infos, key=lambda i: (-i[1].timestamp, i[0]))
        return sorted(commit for commit, _ in ordered[value:])
    cutoff = now - value * 86400
    return sorted(commit for commit, meta in infos if meta.timestamp < cutoff)


def sort_experiments(infos: list[ExperimentInfo]) -> list[ExperimentInfo]:
    readable = sorted((i for i in infos if i.meta), key=lambda i: (-i.meta.timestamp, i.commit))  # type: ignore[union-attr]
    unreadable = sorted((i for i in infos if not i.meta), key=lambda i: i.commit)
    return readable + unreadable


def select_runs(
    rows: "list[Row]", query: RunFilter, sees: Callable[[str | None], bool]
) -> "list[Row]":
    """LIST_RUNS's matches in the caller's read scope, in the filter's order: by meta.bin
    timestamp (newest or oldest first), ties by ID ascending; unreadable meta.bin last, by ID."""
    found = []
    for row in rows:
        user, job_name = (row.meta.user, row.meta.job_name) if row.meta else (None, None)
        if sees(user) and query.matches(row.commit, user, job_name, row.doc):
            found.append(row)
    sign = -1 if query.order == "newest" else 1
    readable = [(sign * r.meta.timestamp, r.commit, r) for r in found if r.meta]
    readable.sort(key=lambda t: (t[0], t[1]))
    unreadable = sorted((r for r in found if not r.meta), key=lambda r: r.commit)
    return [r for _, _, r in readable] + unreadable


def page_cut(items: Iterable[dict[str, Any]], room: int, at_least: int) -> list[dict[str, Any]]:
    """The longest prefix of `items` whose JSON array fits in `room` bytes (UTF-8), but
    never fewer than `at_least` items."""
    out: list[dict[str, Any]] = []
    used = 2  # []
    for item in items:
        used += len(shapes.dumps_utf8(item).encode()) + (1 if out else 0)
        if used > room and len(out) >= at_least:
            break
        out.append(item)
    return out
