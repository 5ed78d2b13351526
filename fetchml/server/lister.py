"""LIST's side of the store: what it found of every experiment (listing.Seen, saved by
listcache.py), the order made from it, and the listing given a step at a time, each
step counted when it is reached. Event loop only; worker threads get values
(listing.look_unheld, listing.list_unheld) and give back new ones.
"""

import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc

from fetchml.protocol.records import Metadata

from . import listcache
from .budget import CacheBudget
from .errors import NotFound
from .listing import (
    SEEN_BYTES,
    ExperimentInfo,
    Seen,
    list_unheld,
    look_some,
    look_unheld,
    sort_experiments,
)
from .lru import OpenExperiments
from .runs import Listing, list_tree

logger = logging.getLogger(__name__)

LIST_CHUNK = 512
"""Experiments counted in the first step of a listing; each next step counts twice as many."""
SAVE_INTERVAL_S = 60.0
"""A changed listing is saved at most this often (saving tens of thousands of entries costs
a worker thread some 100 ms of the interpreter's time), and when the store closes."""
SWEEP_S = 10.0
"""The longest the order goes without a stat of every experiment's directory: in between,
only the new ones and those the last listing reached are looked at."""


class Store(Protocol):
    """What a listing needs of the store that holds it (storage.ExperimentStore)."""

    base: Path
    budget: CacheBudget

    @property
    def index_bytes(self) -> int: ...

    def metadata(self, commit: str) -> Metadata | None: ...

    def damaged(self, commit: str) -> str | None: ...

    async def list_held(self, commit: str) -> ExperimentInfo: ...


class Lister:
    """The store's listing (ExperimentStore.listed)."""

    def __init__(self, store: Store, opened: OpenExperiments) -> None:
        self.store = store
        self.opened = opened
        self._seen: dict[str, Seen] | None = None
        """Experiments as LIST last found them (a held one as it was before it was
        opened); None until the saved listing (listcache.py) is read."""
        self._unsaved = False
        """`_seen` differs from what `<base>/.fetchml-listing` holds."""
        self._saving = False
        self._saved_at = -math.inf
        """When the listing was last saved or read from the file (time.monotonic)."""
        self._order: tuple[list[ExperimentInfo], list[ExperimentInfo]] | None = None
        """The held experiments' metadata and the order last made with it."""
        self._first_unreadable = 0
        self._swept = 0.0
        """When every experiment's directory was last looked at (time.monotonic)."""
        self._held: set[str] = set()
        self._reach = LIST_CHUNK
        """How far into the order the last listing counted."""
        self._checked = 0
        """How far into the order this listing's directories were looked at."""
        self.tree: Listing | None = None
        """The experiments of the tree, reused while the base directory's mtime says none
        was added or removed (runs.list_tree); the store sets it to None when it creates
        or removes one."""

    async def listed(
        self, wanted: Callable[[ExperimentInfo], bool] | None, tg: anyio.abc.TaskGroup | None
    ) -> AsyncGenerator[list[ExperimentInfo], None]:
        """The experiments (those `wanted`, by their metadata) in steps: newest first
        (ties: commit ascending); unreadable metadata last, by commit. A damaged
        experiment is listed with its reason; it never fails the listing.
        The order is made again when a stat of a directory shows its metadata changed:
        those of the experiments the last listing counted and the new ones are looked at
        each time, every one at most SWEEP_S apart. The counts are taken a step at a
        time, so a caller that stops early counts (and filters) no more. Experiments not
        held are looked at in worker threads, without taking a slot of the
        open-experiment LRU, unless their files need indexing."""
        order = await self._ordered()
        first = self._first_unreadable
        demoted: list[ExperimentInfo] = []
        at, size = 0, LIST_CHUNK
        try:
            while at < first:
                step: list[ExperimentInfo] = []
                while at < first and len(step) < size:
                    if wanted is None or wanted(order[at]):
                        step.append(order[at])
                    at += 1
                self._reach = at
                infos = await self._counted(step, at > self._checked)
                if any(info.meta is None for info in infos):  # found damaged: listed last
                    demoted += [info for info in infos if info.meta is None]
                    infos = [info for info in infos if info.meta is not None]
                yield infos
                size *= 2
            unreadable = [info for info in order[first:] if wanted is None or wanted(info)]
            rest = await self._counted(unreadable, True) + demoted
            yield sorted(rest, key=lambda i: i.commit)
        finally:
            self._save_listing(tg)

    async def _ordered(self) -> list[ExperimentInfo]:
        """Every experiment with its metadata in the listing's order (counts not taken);
        the last order again when no experiment's metadata changed."""
        old_tree = self.tree
        self.tree = tree = await anyio.to_thread.run_sync(list_tree, self.store.base, old_tree)
        if self._seen is None:
            self._seen = await anyio.to_thread.run_sync(listcache.load, self.store.base)
            if self._seen:
                self._saved_at = time.monotonic()
        held = {exp.commit for exp in self.opened}
        now = time.monotonic()
        if self._order is None or now - self._swept >= SWEEP_S:
            seen, changed = await anyio.to_thread.run_sync(
                look_unheld, self.store.base, tree[1], held, self._seen
            )
            self._seen, self._swept, self._checked = seen, now, 1 << 62
        else:
            seen, changed = self._seen, False
            some = [i.commit for i in self._order[1][: self._reach] if i.commit not in held]
            if tree is not old_tree or held != self._held:
                listed = set(tree[1])
                for commit in [c for c in seen if c not in listed]:
                    del seen[commit]
                    changed = True
                some += [c for c in tree[1] if c not in seen and c not in held]
            found = await anyio.to_thread.run_sync(look_some, self.store.base, some, seen)
            for commit, now_seen in found.items():
                if now_seen is None:
                    seen.pop(commit, None)
                else:
                    seen[commit] = now_seen
            changed |= bool(found)
            self._checked = self._reach
        self._held = held
        self._unsaved |= changed
        self.store.budget.charge(("listing",), len(seen) * SEEN_BYTES, self._forget_seen)
        held_infos = []
        for commit in sorted(held):
            if not os.path.lexists(self.store.base / commit):
                continue
            try:
                meta, damaged = self.store.metadata(commit), self.store.damaged(commit)
            except NotFound:
                continue
            held_infos.append(ExperimentInfo(commit, meta, 0, damaged))
        if changed or self._order is None or self._order[0] != held_infos:
            infos = [
                ExperimentInfo(c, s.meta, 0, s.damaged) for c, s in seen.items() if c not in held
            ]
            order = sort_experiments(infos + held_infos)
            self._order = held_infos, order
            self._first_unreadable = next(
                (i for i, info in enumerate(order) if info.meta is None), len(order)
            )
        return self._order[1]

    async def _counted(self, infos: list[ExperimentInfo], check: bool) -> list[ExperimentInfo]:
        """`infos` counted now, in their order; those gone are left out. With `check`,
        each directory is looked at: one found changed is listed as it is now, and the
        next listing looks at every experiment."""
        seen = self._seen or {}
        unheld = [
            (c, self.opened.known.get(c), s)
            for c, s in ((i.commit, seen.get(i.commit)) for i in infos)
            if s is not None and c not in self.opened
        ]
        listed = await anyio.to_thread.run_sync(
            list_unheld, self.store.base, unheld, self.store.index_bytes, check
        )
        found = dict(zip((c for c, _, _ in unheld), listed, strict=True))
        out = []
        for commit in (i.commit for i in infos):
            info, state, now_seen = found.get(commit, (None, None, None))
            old = seen.get(commit)
            if now_seen is not None and self._seen is not None and now_seen is not old:
                self._seen[commit], self._unsaved = now_seen, True
                if old is not None and now_seen.stat != old.stat:
                    self._order = None
            if state is not None and commit not in self.opened:
                self.opened.known[commit] = state
            if info is None and os.path.lexists(self.store.base / commit):
                try:
                    info = await self.store.list_held(commit)
                except NotFound:
                    continue
                except OSError as exc:
                    logger.error("listing %s: %s", commit, exc)
                    info = ExperimentInfo(commit, None, 0, "storage error")
            if info is not None:
                out.append(info)
        return out

    def forget(self, commit: str) -> None:
        """The experiment is gone: the tree is listed again and its entry dropped."""
        self.tree = None
        if self._seen is not None and self._seen.pop(commit, None) is not None:
            self._unsaved = True
        self._order = None

    def _save_listing(self, tg: anyio.abc.TaskGroup | None) -> None:
        """Save the listing in the background when it changed, no save is under way and the
        last one is SAVE_INTERVAL_S old (none was read or saved yet: at once)."""
        if self._seen is None or not self._unsaved or self._saving or tg is None:
            return
        if time.monotonic() - self._saved_at < SAVE_INTERVAL_S:
            return
        tg.start_soon(self.save)

    async def save(self) -> None:
        """Save the listing now if it changed since it was last saved (the store closing)."""
        if self._seen is None or not self._unsaved or self._saving:
            return
        self._saving, self._unsaved, snapshot = True, False, dict(self._seen)
        self._saved_at = time.monotonic()
        try:
            await anyio.to_thread.run_sync(listcache.save, self.store.base, snapshot)
        finally:
            self._saving = False

    def _forget_seen(self) -> bool:
        self._seen = {}  # the saved listing is not read again: a LIST reads every experiment
        self._order = None
        return True
