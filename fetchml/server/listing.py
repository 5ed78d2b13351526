"""Listing the experiment tree: one experiment's line, the order of the list, and what a
prune selects. `list_unheld` runs in a worker thread: it takes what is known of the
file and returns what is known now, for the event loop to keep.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fetchml.protocol.records import Metadata

from .entries import Damaged, open_entry
from .experiment import FileState
from .files import METRICS, load_metadata, scan_file


@dataclass(frozen=True, slots=True)
class ExperimentInfo:
    commit: str
    meta: Metadata | None
    """None when meta.bin is unreadable or the experiment damaged."""
    metrics_count: int
    damaged: str | None = None
    """Why `meta` is None: a damaged entry, or "metadata unreadable" (files.load_metadata)."""


def list_unheld(
    base: Path, commit: str, known: FileState | None
) -> tuple[ExperimentInfo, FileState | None]:
    """Worker thread: the listing of an experiment the store does not hold, and what is
    known of its file now (None when nothing new)."""
    meta, damaged = load_metadata(base / commit)
    try:
        count, state = count_unheld(base, commit, known)
    except Damaged as exc:
        return ExperimentInfo(commit, None, 0, damaged or exc.message), None
    return ExperimentInfo(commit, meta, count, damaged), state


def count_unheld(base: Path, commit: str, known: FileState | None) -> tuple[int, FileState | None]:
    try:
        fd = open_entry(base / commit, METRICS, os.O_RDONLY)
    except FileNotFoundError:
        return 0, None
    try:
        size = os.fstat(fd).st_size
        if known is not None and size == known.size:
            return known.count, None
        start = known if known is not None and size > known.end else FileState()
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
