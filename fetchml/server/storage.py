"""ExperimentStore: the Go fetch_ml experiment tree, made of its parts.

Layout: `<base>/<40 hex>/{files/, meta.bin, metrics.bin}`. The parts: group commit
(groupcommit.py) batches appends, the open-experiment LRU (lru.py) bounds the
descriptors held, each experiment's offset index (offsets.py) pages reads within the
memory budget (budget.py), and experiment.py holds the file steps. Which thread may
touch what is written at the top of experiment.py: here, everything runs on the
event loop, and worker threads get values and give back new ones.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc

from fetchml.protocol.records import Metadata, encode_metadata

from . import exlock, experiment
from .budget import CacheBudget
from .errors import AlreadyExists, NotFound, ServerError, StorageFault
from .experiment import Experiment, FileState, MetaInfo, Phase
from .files import (
    DIR_MODE,
    META,
    READ_CHUNK,
    check_commit,
    list_commits,
    load_metadata,
    storage_error,
    write_file_atomic,
)
from .groupcommit import MAX_FLUSH_BYTES as MAX_FLUSH_BYTES
from .groupcommit import CommitHook, FlushHook, GroupCommit
from .indexing import Sidecars, T, Work
from .lister import Lister
from .listing import ExperimentInfo as ExperimentInfo
from .listing import select_prune
from .listing import sort_experiments as sort_experiments
from .lru import OpenExperiments
from .metriclog import MetricLog
from .offsets import Chunk, read_range

logger = logging.getLogger(__name__)

CACHE_BYTES = 256 << 20
"""Default memory for the caches (record-offset indexes, metric columns): storage.cache_bytes."""
INDEX_BYTES = 16 << 20
"""Default of storage.index_bytes: sidecars are written once this much of metrics.bin is
not covered by them."""
INLINE_WRITE_BYTES = 256 << 10
"""Flushes up to this size are written on the event loop in durability `write`."""

Durability = Literal["write", "fsync"]


class ExperimentStore:
    """The experiment tree. Use as `async with ExperimentStore(...) as store`."""

    def __init__(
        self,
        base_path: Path,
        *,
        durability: Durability = "write",
        max_open_files: int = 256,
        cache_bytes: int = CACHE_BYTES,
        index_bytes: int = INDEX_BYTES,
        shared: bool = False,
    ) -> None:
        self.base = Path(base_path)
        self.shared = shared
        """Other daemons append to and prune this tree (cluster mode): appends and reads of
        a file held open check that its path still names it (exlock.check_same), and
        sidecars are written under the experiment's flock."""
        self.sidecars = Sidecars(index_bytes, shared)
        self.budget = CacheBudget(cache_bytes)
        """Shared by the record-offset indexes and the metric columns (server.series)."""
        self.durability = durability
        self.hooks: list[CommitHook] = []
        self.flush_hooks: list[FlushHook] = []
        """Called with (records, seconds) after each flush; for metrics."""
        self.forget_hooks: list[Callable[[str], None]] = []
        """Called with the commit of an experiment the store forgets (`forget`): the caches
        kept beside the store (run documents, columns) drop theirs."""
        self._open = OpenExperiments(self.base, max_open_files, self._forget_index)
        self.lister = Lister(self, self._open)
        self._commits: GroupCommit[Experiment] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> "ExperimentStore":
        self.base.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(exlock.sweep_pruned, self.base)
        self._stack.callback(self._open.close)  # runs last, even when cancelled
        tg = self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.push_async_callback(self.lister.save)  # what changed since the last save
        self._commits = GroupCommit(
            tg,
            self._write,
            self._write_now if self.durability == "write" else None,
            self._open.evict,
            self.hooks,
            self.flush_hooks,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Waits for every flush (even after an error in the body), then closes the files."""
        try:
            await self._stack.aclose()
        finally:
            self._commits = self._tg = None

    def held(self, commit: str) -> Experiment | None:
        """The experiment if the store holds it now (for inspection)."""
        return self._open.held(commit)

    def phase(self, commit: str) -> Phase | None:
        exp = self._open.held(commit)
        return exp.phase if exp else None

    def known_size(self, commit: str) -> int | None:
        """metrics.bin's size when this store last looked (its own appends included); None
        when it holds no state of it."""
        exp = self._open.held(commit)
        return None if exp is None or exp.phase is Phase.UNSCANNED else exp.state.size

    def _forget_index(self, exp: Experiment) -> None:
        self.budget.forget(("offsets", exp.commit))

    def forget(self, commit: str) -> None:
        """The experiment is gone (pruned here or by another process): its open file, what
        is known of it and every cache of it (`forget_hooks` too) are dropped, so its next
        use looks at the disk again. A worker step under way keeps the file until it ends."""
        exp = self._open.held(commit)
        self._open.drop(commit)
        if exp is not None:
            exp.remove()
            self._forget_index(exp)
        self.lister.forget(commit)
        for hook in self.forget_hooks:
            hook(commit)

    # -- paths and metadata ------------------------------------------------

    def exists(self, commit: str) -> bool:
        exp = self._open.held(commit)
        if exp is not None and exp.meta is not None:
            return True
        return os.path.lexists(self.base / check_commit(commit))

    def _meta(self, commit: str) -> MetaInfo:
        exp = self._open.get(commit)
        if exp.meta is None:
            if not os.path.lexists(exp.path):
                self._open.drop(commit)
                raise NotFound(f"experiment {commit} not found")
            exp.meta = MetaInfo(*load_metadata(exp.path))
        return exp.meta

    def metadata(self, commit: str) -> Metadata | None:
        """meta.bin of an existing experiment, None when unreadable or the experiment is
        damaged (see `damaged`); NotFound when absent."""
        return self._meta(commit).meta

    def damaged(self, commit: str) -> str | None:
        """Why an experiment has no metadata: a damaged entry, or "metadata unreadable"."""
        return self._meta(commit).damaged

    async def create(self, meta: Metadata) -> None:
        """Make the directory, files/ and meta.bin in one rename; AlreadyExists if present."""
        commit = check_commit(meta.commit_id)
        final = self.base / commit
        if os.path.lexists(final):
            raise AlreadyExists(f"experiment {commit} already exists")
        await anyio.to_thread.run_sync(experiment.create, self.base, final, meta)
        self.lister.tree = None
        self._open.get(commit).meta = MetaInfo(meta, None)

    async def write_metadata(self, meta: Metadata) -> None:
        exp = self._open.get(check_commit(meta.commit_id))
        try:
            await anyio.to_thread.run_sync(
                write_file_atomic, exp.path / META, encode_metadata(meta)
            )
        except OSError as exc:
            raise storage_error(exc) from exc
        exp.meta = MetaInfo(meta, None)

    def commits(self) -> list[str]:
        return list_commits(self.base)

    async def list_experiments(self) -> list[ExperimentInfo]:
        """Every experiment in the listing's order (`listed`)."""
        async with aclosing(self.listed()) as listed:
            return [info async for infos in listed for info in infos]

    def listed(
        self, wanted: Callable[[ExperimentInfo], bool] | None = None
    ) -> AsyncGenerator[list[ExperimentInfo], None]:
        """The listing in steps (lister.Lister.listed)."""
        return self.lister.listed(wanted, self._tg)

    async def list_held(self, commit: str) -> ExperimentInfo:
        meta, damaged = self.metadata(commit), self.damaged(commit)
        try:
            return ExperimentInfo(commit, meta, await self.count(commit), damaged)
        except NotFound:
            raise
        except ServerError as exc:
            return ExperimentInfo(commit, None, 0, damaged or exc.message)

    # -- appends -----------------------------------------------------------

    def submit(self, commit: str, data: bytes, count: int) -> "asyncio.Future[int]":
        """Queue whole encoded records; the future gives the first record's index once written."""
        assert self._commits is not None, "store used outside its async with"
        return self._commits.submit(self._open.get(commit), data, count)

    def flush_scheduled(self) -> None:
        """Write now the appends the event loop would write at its next turn."""
        if self._commits is not None:
            self._commits.flush_scheduled()

    def defer_writes(self, defer: bool) -> None:
        """While deferred, appends wait for `flush_scheduled` or `schedule_writes`, which
        the caller runs before it returns to the event loop (GroupCommit.defer)."""
        if self._commits is not None:
            self._commits.defer = defer

    def schedule_writes(self) -> None:
        """Have the event loop's next turn make the appends left deferred."""
        if self._commits is not None:
            self._commits.schedule()

    async def append(self, commit: str, data: bytes, count: int) -> int:
        return await self.submit(commit, data, count)

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        if self._commits is not None:
            await self._commits.flush()

    def _write_now(self, exp: Experiment, data: bytes, count: int) -> int | None:
        """Group commit's write step on the event loop: `_write_inline`, or None."""
        try:
            return self._write_inline(exp, data, count)
        except Exception:
            with self._write_errors(exp):  # the same errors as `_write`'s
                raise

    async def _write(self, exp: Experiment, data: bytes, count: int) -> int:
        """Group commit's write step: the first record's index once the bytes are written."""
        with self._write_errors(exp):
            first = self._write_inline(exp, data, count)
            if first is not None:
                return first
            async with exp.lock:
                if exp.phase is not Phase.OPEN:
                    await self._open_for_append(exp)
                fd = exp.fd
                assert fd is not None
                state = await anyio.to_thread.run_sync(
                    experiment.append,
                    fd,
                    exp.metrics_path,
                    exp.state,
                    data,
                    count,
                    self.durability == "fsync",
                    True,
                    self.shared,
                )
                assert state is not None  # a write that waits always gets the lock
                return self._written(exp, state, fd, count)

    @contextlib.contextmanager
    def _write_errors(self, exp: Experiment) -> Iterator[None]:
        """A write step's failures as ServerErrors; a pruned experiment's file goes."""
        try:
            yield
        except NotFound:  # pruned or replaced by another process: its file goes
            if self._open.held(exp.commit) is exp:
                self.forget(exp.commit)
            raise
        except OSError as exc:
            logger.error("append to %s failed: %s", exp.commit, exc)
            raise storage_error(exc) from None
        finally:
            if exp.phase is Phase.REMOVED and not exp.lock.locked():
                exp.close()  # forgotten during the step: its descriptor goes now

    def _write_inline(self, exp: Experiment, data: bytes, count: int) -> int | None:
        """A small write to the page cache, on the event loop: a thread hop would cost more
        than the write (and, under load, up to the interpreter's switch interval in latency).
        None when it has to go to a thread: fsync, first open, a big batch, a busy lock."""
        fd = exp.fd
        if (
            self.durability != "write"
            or exp.phase is not Phase.OPEN
            or fd is None
            or len(data) > INLINE_WRITE_BYTES
            or exp.lock.locked()
        ):
            return None
        state = experiment.append(
            fd, exp.metrics_path, exp.state, data, count, False, False, self.shared
        )
        return None if state is None else self._written(exp, state, fd, count)

    def _written(self, exp: Experiment, state: FileState, fd: int, count: int) -> int:
        exp.settle(state, fd)
        if exp.phase is Phase.CORRUPT:
            raise StorageFault("metrics file corrupt")
        self.sidecars.written(self._tg, exp)
        return state.count - count

    async def _open_for_append(self, exp: Experiment) -> None:
        """Under exp.lock: open the file for appending, recovering it first."""
        if exp.phase is Phase.REMOVED:
            raise NotFound(f"experiment {exp.commit} not found")
        async with exp.sidecar_lock:
            fd, state, cp = await anyio.to_thread.run_sync(
                experiment.open_for_append,
                exp.path,
                exp.commit,
                exp.state,
                exp.sidecar,
                self.sidecars.bytes_for(exp),
            )
            exp.trust(cp)
        exp.settle(state, fd)
        if exp.phase is Phase.CORRUPT:
            raise StorageFault("metrics file corrupt")

    # -- reads -------------------------------------------------------------

    async def count(self, commit: str) -> int:
        """Records in the valid prefix now, whoever appended them."""
        return (await self._scanned(commit)).state.count

    async def _scanned(self, commit: str) -> Experiment:
        """An experiment whose valid prefix is known and current: another process's appends
        are read first, and (`shared`) a file this process holds open is checked to be
        still the experiment's (NotFound once another process pruned it), unless a worker
        step, which checks both itself, is under way."""
        exp = self._open.get(commit)
        if exp.phase is Phase.OPEN:
            fd = exp.fd
            if fd is None or exp.lock.locked():
                return exp
            try:
                held = exlock.check_same(fd, exp.metrics_path) if self.shared else os.fstat(fd)
            except NotFound:
                self.forget(commit)
                raise
            if held.st_size == exp.state.end:
                return exp
        elif not os.path.lexists(exp.path):  # removed from outside
            self._open.drop(commit)
            if not exp.busy:
                exp.close()
            raise NotFound(f"experiment {commit} not found")
        try:
            async with exp.lock:
                await self._refresh(exp, exp.phase is not Phase.UNSCANNED)
        except OSError as exc:
            logger.error("reading %s failed: %s", exp.metrics_path, exc)
            raise storage_error(exc) from None
        return exp

    async def _refresh(self, exp: Experiment, known: bool) -> None:
        """Under exp.lock: what is known of the file, from it and its sidecars."""
        async with exp.sidecar_lock:
            state, cp = await anyio.to_thread.run_sync(
                experiment.refresh,
                exp.path,
                exp.state,
                known,
                exp.sidecar,
                self.sidecars.bytes_for(exp),
                self.shared,
            )
            exp.trust(cp)
        exp.settle(state, exp.fd)

    async def read(
        self, commit: str, start: int = 0, max_bytes: int = READ_CHUNK, max_records: int = 0
    ) -> Chunk:
        """Whole records from index `start`: at least one, at most `max_bytes` and
        `max_records` (0: no count limit)."""
        exp = await self._scanned(commit)
        state = exp.state
        total = state.count
        if start >= total:
            return Chunk(b"", total, 0, total)
        stop = min(total, start + max_records) if max_records else total
        if exp.sidecar is not None and exp.sidecar.anchors:
            chunk = await self.sidecars.read(exp, start, max_bytes, stop)
            if chunk is not None:
                return chunk
        index = exp.index
        try:
            async with index.lock:  # appends go on meanwhile
                chunk = await anyio.to_thread.run_sync(
                    read_range,
                    exp.path,
                    index.lend(state.epoch),
                    state.end,
                    start,
                    max_bytes,
                    stop,
                    total,
                )
        except OSError as exc:
            logger.error("reading %s failed: %s", exp.metrics_path, exc)
            raise storage_error(exc) from None
        if self._open.held(commit) is exp:  # an evicted or pruned one is not charged
            index.charge(self.budget, ("offsets", commit))
        return chunk

    async def on_sidecars(self, commit: str, work: Work[T]) -> T | None:
        """`work` in a worker thread on the experiment's sidecars, current with its valid
        prefix (indexing.Sidecars.run); None when they cannot be written."""
        return await self.sidecars.run(await self._scanned(commit), work)

    @property
    def index_bytes(self) -> int:
        return self.sidecars.index_bytes

    async def prefix(self, commit: str) -> tuple[Path, int, int]:
        """The metrics file and its valid prefix now: (path, records, bytes)."""
        exp = await self._scanned(commit)
        return exp.metrics_path, exp.state.count, exp.state.end

    async def read_all(self, commit: str) -> bytes:
        """The whole valid prefix."""
        exp = await self._scanned(commit)
        end = exp.state.end
        if not end:
            return b""
        return await anyio.to_thread.run_sync(experiment.read_prefix, exp.path, end)

    # -- prune ---------------------------------------------------------------

    async def prune(
        self,
        kind: Literal["keep", "older"],
        value: int,
        now: float | None = None,
        owner: str | None = None,
    ) -> list[str]:
        """Remove experiments (Go PruneExperiments): keep the newest `value`, or
        remove those older than `value` days. Unreadable metadata is never pruned.
        With `owner`, only that user's experiments are considered."""
        pruned = []
        await anyio.to_thread.run_sync(exlock.sweep_pruned, self.base)
        for commit in self.prune_selection(kind, value, now, owner):
            exp = self._open.get(commit)
            async with exp.lock, exp.sidecar_lock:
                exp.settle(exp.state, None, removed=True)  # a flush still holding it fails
                if await anyio.to_thread.run_sync(exlock.remove, exp.path):
                    pruned.append(commit)
            self.forget(commit)
        return pruned

    def prune_selection(
        self,
        kind: Literal["keep", "older"],
        value: int,
        now: float | None = None,
        owner: str | None = None,
    ) -> list[str]:
        """What `prune` with these arguments removes, removing nothing."""
        infos = []
        for commit in self.commits():
            try:
                meta = self.metadata(commit)
            except NotFound:
                continue
            if meta is not None and owner in (None, meta.user):
                infos.append((commit, meta))
        return select_prune(infos, kind, value, time.time() if now is None else now)


if TYPE_CHECKING:  # the store is a MetricLog (checked by mypy)
    _conforms: type[MetricLog] = ExperimentStore
