"""Appends made by another process (a cluster peer, fetch_ml's Go writer) reach this
daemon's watchers within a tick: every TICK_S, metrics.bin of each watched experiment is
stat'ed (in one worker thread, since a shared filesystem's stat may wait on the network),
and one whose size differs from what the store last knew of it nudges its watchers
(WatchHub.nudge), who read what is new from the file; one whose directory is gone
(pruned) is forgotten and its watchers are ended. One stat per watched experiment
per tick; nothing while nobody watches. Faster fan-out may come on top; this is the floor.
"""

import os
from pathlib import Path

import anyio

from .files import METRICS
from .storage import ExperimentStore
from .watch import WatchHub

TICK_S = 0.15


GONE = -1
"""`sizes` of an experiment whose directory is gone (pruned by another process)."""


def sizes(base: Path, commits: list[str]) -> list[int | None]:
    """Worker: metrics.bin's size of each experiment (None when there is none yet; GONE
    when the directory is gone)."""
    out: list[int | None] = []
    for commit in commits:
        try:
            out.append(os.stat(f"{base}/{commit}/{METRICS}").st_size)
        except OSError:
            out.append(None if os.path.lexists(f"{base}/{commit}") else GONE)
    return out


async def follow(store: ExperimentStore, hub: WatchHub, tick_s: float = TICK_S) -> None:
    """Nudge the watchers of experiments that another process appended to, and end those
    of experiments it pruned; until cancelled."""
    while True:
        await anyio.sleep(tick_s)
        commits = hub.watched()
        if not commits:
            continue
        for commit, size in zip(
            commits, await anyio.to_thread.run_sync(sizes, store.base, commits), strict=True
        ):
            if size == GONE:
                store.forget(commit)
                hub.end(commit)
            elif size is not None and size != store.known_size(commit):
                hub.nudge(commit)
