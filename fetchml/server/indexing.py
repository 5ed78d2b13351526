"""The store's side of the sidecars (sidecar.py, written by indexer.py): extended in the
background as a file grows, read under each experiment's sidecar lock, and thrown away
to be written again when found damaged. Event loop only; the work runs in worker threads.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc

from . import exlock, indexer, sidecar
from .entries import Damaged
from .errors import NotFound
from .experiment import Experiment, Phase
from .offsets import Chunk, read_anchored
from .sidecar import Checkpoint

logger = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Path, Checkpoint, set[int]], T]
"""Run in a worker thread with (directory, checkpoint, columns checked by this process)."""


class Sidecars:
    def bytes_for(self, exp: Experiment) -> int:
        """index_bytes for a worker step on `exp` (0 once writing its sidecars failed)."""
        return 0 if exp.no_sidecars else self.index_bytes

    def __init__(self, index_bytes: int, shared: bool = False) -> None:
        self.index_bytes = index_bytes
        self.shared = shared
        """Other daemons write them too: written under the experiment's flock."""
        """Sidecars are extended once this much of metrics.bin is not covered (0: only
        when a query needs them)."""
        self._extending: set[str] = set()
        """Experiments whose sidecars a background task is extending."""
        self._starting: set[asyncio.Task[None]] = set()

    def written(self, tg: anyio.abc.TaskGroup | None, exp: Experiment) -> None:
        """After an append: extend the sidecars in the background when enough is new."""
        covered = exp.sidecar.end if exp.sidecar else 0
        if (
            exp.state.end - covered >= self.index_bytes > 0
            and not exp.no_sidecars
            and exp.commit not in self._extending
            and tg is not None
        ):
            self._extending.add(exp.commit)
            task = asyncio.get_running_loop().create_task(self._start(tg, exp))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, tg: anyio.abc.TaskGroup, exp: Experiment) -> None:
        """Start `_catch_up` in the store's task group: anyio starts tasks from a task, and
        an append can end in a transport's callback."""
        try:
            tg.start_soon(self._catch_up, exp)
        except RuntimeError:  # the store is closing
            self._extending.discard(exp.commit)

    async def _catch_up(self, exp: Experiment) -> None:
        """Extend the sidecars over what was appended, off the event loop; appends go on."""
        try:
            while exp.phase in (Phase.OPEN, Phase.KNOWN):
                covered = exp.sidecar.end if exp.sidecar else 0
                if exp.state.end - covered < self.index_bytes:
                    return
                async with exp.sidecar_lock:
                    if not await self.extend(exp):
                        return
        finally:
            self._extending.discard(exp.commit)

    async def extend(self, exp: Experiment) -> bool:
        """Under exp.sidecar_lock: the sidecars cover the valid prefix known now (False
        when they could not be written)."""
        end = exp.state.end
        if exp.sidecar is not None and exp.sidecar.end >= end:
            return True
        try:
            cp = await anyio.to_thread.run_sync(
                indexer.extend_to, exp.path, exp.sidecar, end, self.shared
            )
        except NotFound:  # pruned meanwhile
            return False
        except (OSError, indexer.TooManyNames, Damaged) as exc:
            logger.warning("%s: sidecars not extended: %s", exp.commit, exc)
            exp.no_sidecars = True
            return False
        exp.trust(cp)
        return True

    async def read(self, exp: Experiment, start: int, max_bytes: int, stop: int) -> Chunk | None:
        """A read that walks from the sidecars' nearest anchor, without an offset index;
        None when the anchors are not usable (the caller indexes the file)."""
        state = exp.state
        async with exp.sidecar_lock:
            cp = exp.sidecar
            if cp is None or not cp.anchors:
                return None
            a = min(start // sidecar.ANCHOR, cp.anchors - 1)
            try:
                at = await anyio.to_thread.run_sync(sidecar.anchor, exp.path, cp, exp.checked, a)
                return await anyio.to_thread.run_sync(
                    read_anchored,
                    exp.path,
                    at,
                    a * sidecar.ANCHOR,
                    state.end,
                    start,
                    max_bytes,
                    stop,
                    state.count,
                )
            except (sidecar.Unusable, OSError) as exc:
                await self._discard(exp, exc)
                return None

    async def run(self, exp: Experiment, work: Work[T]) -> T | None:
        """`work` on sidecars that cover the valid prefix as it is now; they are extended
        first, and written again once when `work` finds them damaged. None when they
        cannot be written (the caller reads metrics.bin instead)."""
        count = exp.state.count
        for _ in range(0 if exp.no_sidecars else 2):
            async with exp.sidecar_lock:
                if exp.phase is Phase.REMOVED:
                    raise NotFound(f"experiment {exp.commit} not found")
                await self.extend(exp)
                cp = exp.sidecar
                if cp is None or cp.count < count:
                    return None
                try:
                    return await anyio.to_thread.run_sync(work, exp.path, cp, exp.checked)
                except (sidecar.Unusable, OSError) as exc:
                    await self._discard(exp, exc)
        return None

    async def _discard(self, exp: Experiment, why: Exception) -> None:
        """Under exp.sidecar_lock: sidecars found damaged go, to be written again."""
        logger.warning("%s: sidecars damaged (%s): rebuilding", exp.commit, why)
        exp.trust(None)
        try:
            await anyio.to_thread.run_sync(_remove, exp.path, self.shared)
        except OSError as exc:
            logger.warning("%s: sidecars not removed: %s", exp.commit, exc)


def _remove(directory: Path, shared: bool) -> None:
    """The sidecars deleted (with `shared`, under the experiment's flock; nothing when it
    is gone)."""
    if not shared:
        sidecar.remove(directory)
        return
    with contextlib.suppress(NotFound), exlock.held(directory):
        sidecar.remove(directory)
