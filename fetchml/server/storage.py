"""ExperimentStore: the Go fetch_ml experiment tree, with group-commit appends.

Layout: `<base>/<40 hex>/{files/, meta.bin, metrics.bin}`. Appends never
write one metric at a time: `submit()` queues a request's encoded records on
the experiment's pending list and returns a future; one flusher per
experiment writes everything pending with a single write (fsynced in
`durability: fsync`), then resolves every waiter and tells the watchers.
"""

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc

from fetchml.protocol.records import Metadata, encode_metadata

from .budget import CacheBudget
from .entries import Damaged, open_entry
from .errors import AlreadyExists, NotFound, ServerError
from .experiment import Chunk, Experiment, Pending
from .files import (
    DIR_MODE,
    MAX_TORN_BYTES,
    META,
    METRICS,
    READ_CHUNK,
    check_commit,
    fsync_dir,
    list_commits,
    load_metadata,
    scan_file,
    storage_error,
    write_file_atomic,
)

logger = logging.getLogger(__name__)

CACHE_BYTES = 256 << 20
"""Default memory for the caches (record-offset indexes, metric columns): storage.cache_bytes."""
INLINE_WRITE_BYTES = 256 << 10
"""Flushes up to this size are written on the event loop in durability `write`."""
MAX_FLUSH_BYTES = 8 << 20
"""A flush never writes more; so a crash tears at most this much."""

Durability = Literal["write", "fsync"]
CommitHook = Callable[[str, int, bytes, int], None]
"""Called after each flush with (commit hex, index of the first record, bytes, record count)."""


@dataclass(frozen=True, slots=True)
class ExperimentInfo:
    commit: str
    meta: Metadata | None
    """None when meta.bin is unreadable or the experiment damaged."""
    metrics_count: int
    damaged: str | None = None
    """Why `meta` is None: a damaged entry, or "metadata unreadable" (files.load_metadata)."""


class ExperimentStore:
    """The experiment tree. Use as `async with ExperimentStore(...) as store`."""

    def __init__(
        self,
        base_path: Path,
        *,
        durability: Durability = "write",
        max_open_files: int = 256,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.base = Path(base_path)
        self.budget = CacheBudget(cache_bytes)
        """Shared by the record-offset indexes and the metric columns (server.series)."""
        self.durability = durability
        self.max_open = max_open_files
        self.hooks: list[CommitHook] = []
        self.flush_hooks: list[Callable[[int, float], None]] = []
        """Called with (records, seconds) after each flush; for metrics."""
        self._experiments: OrderedDict[str, Experiment] = OrderedDict()
        self._known: dict[str, tuple[int, int, int]] = {}
        """(size, valid end, records) of evicted experiments, so a LIST need not rescan."""
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> "ExperimentStore":
        self.base.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)
        self._tg = None
        for exp in self._experiments.values():
            exp.close()
        self._experiments.clear()

    # -- paths and metadata ------------------------------------------------

    def _get(self, commit: str) -> Experiment:
        exp = self._experiments.get(commit)
        if exp is None:
            exp = Experiment(commit, self.base / check_commit(commit))
            known = self._known.pop(commit, None)
            if known is not None:  # what a scan found before eviction; refresh() checks the size
                exp.size, exp.end, exp.count = known
                exp.scanned = True
            self._experiments[commit] = exp
            self._evict(keep=commit)
        else:
            self._experiments.move_to_end(commit)
        return exp

    def _evict(self, keep: str = "") -> None:
        """Forget idle experiments, oldest use first, until at most max_open are held."""
        excess = len(self._experiments) - self.max_open
        for commit in list(self._experiments):
            if excess <= 0:
                return
            exp = self._experiments[commit]
            if commit != keep and not exp.busy:
                exp.close()
                del self._experiments[commit]
                if exp.scanned and not exp.corrupt:
                    self._known[commit] = (exp.size, exp.end, exp.count)
                excess -= 1

    def _charge_index(self, exp: Experiment) -> None:
        """Charge an experiment's record-offset index (8 bytes a record) to the budget; when
        dropped it is rebuilt on demand."""

        def drop() -> bool:
            if exp.read_lock.locked():
                return False
            exp.offsets = array("Q", [0])
            return True

        self.budget.charge(("offsets", exp.commit), len(exp.offsets) * 8, drop)

    def exists(self, commit: str) -> bool:
        if commit in self._experiments and self._experiments[commit].meta_loaded:
            return True
        return os.path.lexists(self.base / check_commit(commit))

    def metadata(self, commit: str) -> Metadata | None:
        """meta.bin of an existing experiment, None when unreadable or the experiment is
        damaged (see `damaged`); NotFound when absent."""
        exp = self._get(commit)
        if not exp.meta_loaded:
            if not os.path.lexists(exp.path):
                del self._experiments[commit]
                raise NotFound(f"experiment {commit} not found")
            exp.meta, exp.damaged = load_metadata(exp.path)
            exp.meta_loaded = True
        return exp.meta

    def damaged(self, commit: str) -> str | None:
        """Why an experiment has no metadata: a damaged entry, or "metadata unreadable"."""
        self.metadata(commit)
        return self._experiments[commit].damaged

    async def create(self, meta: Metadata) -> None:
        """Make the directory, files/ and meta.bin in one rename; AlreadyExists if present."""
        commit = check_commit(meta.commit_id)
        final = self.base / commit
        if os.path.lexists(final):
            raise AlreadyExists(f"experiment {commit} already exists")
        await anyio.to_thread.run_sync(self._create_sync, final, meta)
        exp = self._get(commit)
        exp.meta, exp.meta_loaded = meta, True

    def _create_sync(self, final: Path, meta: Metadata) -> None:
        tmp = self.base / f".create-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
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
            fsync_dir(self.base)
        except OSError as exc:
            raise storage_error(exc) from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    async def write_metadata(self, meta: Metadata) -> None:
        exp = self._get(check_commit(meta.commit_id))
        try:
            await anyio.to_thread.run_sync(
                write_file_atomic, exp.path / META, encode_metadata(meta)
            )
        except OSError as exc:
            raise storage_error(exc) from exc
        exp.meta, exp.meta_loaded = meta, True

    def commits(self) -> list[str]:
        return list_commits(self.base)

    async def list_experiments(self) -> list[ExperimentInfo]:
        """Newest first (ties: commit ascending); unreadable metadata last, by commit.
        A damaged experiment is listed with its reason; it never fails the listing."""
        infos = []
        for commit in self.commits():
            try:
                if commit in self._experiments:
                    info = await self._list_held(commit)
                else:  # in a worker thread, without taking a slot of the open-experiment LRU
                    info = await anyio.to_thread.run_sync(self._list_unheld, commit)
            except NotFound:
                continue
            except OSError as exc:
                logger.error("listing %s: %s", commit, exc)
                info = ExperimentInfo(commit, None, 0, "storage error")
            infos.append(info)
        return sort_experiments(infos)

    async def _list_held(self, commit: str) -> ExperimentInfo:
        meta, damaged = self.metadata(commit), self.damaged(commit)
        try:
            return ExperimentInfo(commit, meta, await self.count(commit), damaged)
        except NotFound:
            raise
        except ServerError as exc:
            return ExperimentInfo(commit, None, 0, damaged or exc.message)

    def _list_unheld(self, commit: str) -> ExperimentInfo:
        meta, damaged = load_metadata(self.base / commit)
        try:
            return ExperimentInfo(commit, meta, self._count_unheld(commit), damaged)
        except Damaged as exc:
            return ExperimentInfo(commit, None, 0, damaged or exc.message)

    def _count_unheld(self, commit: str) -> int:
        """Records of an experiment the store does not hold, from `_known` when current."""
        known = self._known.get(commit)
        try:
            fd = open_entry(self.base / commit, METRICS, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            size = os.fstat(fd).st_size
            if known is None or size != known[0]:
                start, count = (known[1], known[2]) if known and size > known[1] else (0, 0)
                result = scan_file(fd, start, count)
                known = (size, result.end, result.records)
                if size - result.end <= MAX_TORN_BYTES:
                    self._known[commit] = known
            return known[2]
        finally:
            os.close(fd)

    # -- appends -----------------------------------------------------------

    def submit(self, commit: str, data: bytes, count: int) -> "asyncio.Future[int]":
        """Queue whole encoded records; the future gives the first record's index once written."""
        exp = self._get(commit)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        exp.pending.append(Pending(data, count, future))
        if not exp.flushing:
            exp.flushing = True
            assert self._tg is not None, "store used outside its async with"
            self._tg.start_soon(self._flush_loop, exp)
        return future

    async def append(self, commit: str, data: bytes, count: int) -> int:
        return await self.submit(commit, data, count)

    async def _flush_loop(self, exp: Experiment) -> None:
        try:
            while exp.pending:
                batch = exp.writing = _take_batch(exp.pending)
                data = b"".join(p.data for p in batch)
                count = sum(p.records for p in batch)
                started = time.perf_counter()
                try:
                    first = self._write_inline(exp, data, count)
                    if first is None:
                        async with exp.lock:
                            first = await anyio.to_thread.run_sync(
                                exp.write, data, count, self.durability == "fsync"
                            )
                    assert first is not None  # a write that waits always gets the lock
                except OSError as exc:
                    logger.error("append to %s failed: %s", exp.commit, exc)
                    _fail(batch, storage_error(exc))
                    continue
                except Exception as exc:  # handed to each request's own error path
                    _fail(batch, exc)
                    continue
                index = first
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_result(index)
                    index += pending.records
                for flush_hook in self.flush_hooks:
                    flush_hook(count, time.perf_counter() - started)
                for hook in self.hooks:
                    try:
                        hook(exp.commit, first, data, count)
                    except Exception:  # a watcher's fault must not stop appends
                        logger.exception("commit hook failed for %s", exp.commit)
        finally:
            exp.flushing = False
            exp.writing = []
        self._evict()

    def _write_inline(self, exp: Experiment, data: bytes, count: int) -> int | None:
        """A small write to the page cache, on the event loop: a thread hop would cost more
        than the write (and, under load, up to the interpreter's switch interval in latency).
        None when it has to go to a thread: fsync, first open, a big batch, a busy lock."""
        if (
            self.durability != "write"
            or exp.fd is None
            or exp.corrupt
            or len(data) > INLINE_WRITE_BYTES
            or exp.lock.locked()
        ):
            return None
        return exp.write(data, count, False, wait=False)

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        futures = [
            p.future for exp in self._experiments.values() for p in (*exp.writing, *exp.pending)
        ]
        for future in futures:
            with contextlib.suppress(Exception):
                await future

    # -- reads -------------------------------------------------------------

    async def count(self, commit: str) -> int:
        exp = await self._scanned(commit)
        return exp.count

    async def _scanned(self, commit: str) -> Experiment:
        """An experiment whose valid prefix is known and current."""
        exp = self._get(commit)
        if exp.fd is not None and exp.scanned:
            return exp
        if not os.path.lexists(exp.path):  # removed from outside
            self._experiments.pop(commit, None)
            if not exp.busy:
                exp.close()
            raise NotFound(f"experiment {commit} not found")
        try:
            async with exp.lock:
                await anyio.to_thread.run_sync(exp.refresh)
        except OSError as exc:
            logger.error("reading %s failed: %s", exp.metrics_path, exc)
            raise storage_error(exc) from None
        return exp

    async def read(
        self, commit: str, start: int = 0, max_bytes: int = READ_CHUNK, max_records: int = 0
    ) -> Chunk:
        """Whole records from index `start`: at least one, at most `max_bytes` and
        `max_records` (0: no count limit)."""
        exp = await self._scanned(commit)
        total = exp.count
        if start >= total:
            return Chunk(b"", total, 0, total)
        stop = min(total, start + max_records) if max_records else total
        try:
            async with exp.read_lock:  # guards the offsets index; appends go on meanwhile
                chunk = await anyio.to_thread.run_sync(
                    exp.read_range, start, max_bytes, stop, total
                )
        except OSError as exc:
            logger.error("reading %s failed: %s", exp.metrics_path, exc)
            raise storage_error(exc) from None
        self._charge_index(exp)
        return chunk

    async def prefix(self, commit: str) -> tuple[Path, int, int]:
        """The metrics file and its valid prefix now: (path, records, bytes)."""
        exp = await self._scanned(commit)
        return exp.metrics_path, exp.count, exp.end

    async def read_all(self, commit: str) -> bytes:
        """The whole valid prefix."""
        exp = await self._scanned(commit)
        end = exp.end
        if not end:
            return b""
        return await anyio.to_thread.run_sync(exp.read_prefix, end)

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
        victims = self.prune_selection(kind, value, now, owner)
        for commit in victims:
            exp = self._get(commit)
            async with exp.lock:
                exp.close()
                exp.removed = True  # a flush still holding it fails instead of writing
                await anyio.to_thread.run_sync(shutil.rmtree, exp.path)
            self._experiments.pop(commit, None)
            self._known.pop(commit, None)
        if victims:
            await anyio.to_thread.run_sync(fsync_dir, self.base)
        return victims

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


def _take_batch(pending: list[Pending]) -> list[Pending]:
    """Whole requests up to MAX_FLUSH_BYTES (always at least one)."""
    size = 0
    n = 0
    for item in pending:
        if n and size + len(item.data) > MAX_FLUSH_BYTES:
            break
        size += len(item.data)
        n += 1
    batch = pending[:n]
    del pending[:n]
    return batch


def _fail(batch: list[Pending], exc: Exception) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
