"""`SqliteJobQueue`: the JobQueue (jobs.py) in one SQLite file (WAL mode).

Its single connection is used from worker threads, one call at a time (an
anyio.Lock). Every read-modify-write runs in a `BEGIN IMMEDIATE` transaction, which
takes SQLite's write lock before reading, so a claim is atomic even against another
process using the same file. Old finished jobs are deleted at open and then at most
once an hour; expired leases are handled before every operation.
"""

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self, TypeVar

import anyio

from fetchml.protocol.enums import UPDATABLE_JOB_STATUSES, JobStatus

from . import jobs
from .errors import (
    DatabaseError,
    DiskFull,
    InvalidRequest,
    JobCancelled,
    JobNotFound,
    PermissionDenied,
)
from .jobs import (
    _FIELDS,
    CANCEL_DENIED,
    CLAIMED_DENIED,
    DAY_S,
    LEASE_EXPIRED,
    PURGE_INTERVAL_S,
    REASSIGNED,
    Job,
    cap_error,
    new_job,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 3
DIR_MODE = 0o750
FILE_MODE = 0o600
BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    """CREATE TABLE jobs (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT    NOT NULL UNIQUE,
        job_name   TEXT    NOT NULL,
        args       TEXT    NOT NULL DEFAULT '',
        status     INTEGER NOT NULL CHECK (status BETWEEN 0 AND 4),
        priority   INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 255),
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        ended_at   INTEGER,
        worker_id  TEXT,
        error      TEXT,
        datasets   TEXT    NOT NULL DEFAULT '[]',
        commit_id  TEXT    NOT NULL,
        user       TEXT    NOT NULL,
        claimed_by TEXT,
        spec       TEXT,
        attempts   INTEGER NOT NULL DEFAULT 0,
        heartbeat_at INTEGER
    )""",
    "CREATE INDEX jobs_claim_order ON jobs (status, priority DESC, seq)",
    "CREATE INDEX jobs_by_name ON jobs (job_name, status)",
)
_V2_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (user, created_at, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_by_end ON jobs (ended_at)",
)
_V3_COLUMNS = (
    ("claimed_by", "claimed_by TEXT"),
    ("spec", "spec TEXT"),
    ("attempts", "attempts INTEGER NOT NULL DEFAULT 0"),
    ("heartbeat_at", "heartbeat_at INTEGER"),
)
"""Columns added since schema 1, each with its definition for ALTER TABLE."""
_FINISHED = (int(JobStatus.COMPLETED), int(JobStatus.FAILED), int(JobStatus.CANCELLED))
_ACTIVE = (int(JobStatus.QUEUED), int(JobStatus.RUNNING))
_COLUMNS = ", ".join(_FIELDS)  # the jobs table has a column per Job field


class SqliteJobQueue:
    """JobQueue on the standard-library sqlite3; open it with `await SqliteJobQueue.open(path)`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        keep_days: float = 90.0,
        lease_s: float = 0.0,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = anyio.Lock()
        self._keep_s = int(keep_days * DAY_S)
        self._lease_s = lease_s
        self._purged_at = jobs._now()

    @classmethod
    async def open(
        cls,
        path: Path,
        keep_days: float = 90.0,
        lease_s: float = 0.0,
    ) -> Self:
        """Open (create, or migrate from an older schema) the database; delete old finished
        jobs. `lease_s` 0 turns leases off."""
        try:
            conn = await anyio.to_thread.run_sync(_connect, path)
        except (OSError, sqlite3.Error) as exc:
            logger.exception("cannot open job database %s", path)
            raise DatabaseError("database error") from exc
        queue = cls(conn, keep_days, lease_s)
        await anyio.to_thread.run_sync(_purge, conn, queue._purged_at - queue._keep_s)
        return queue

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    await anyio.to_thread.run_sync(conn.close)
                except sqlite3.Error:
                    logger.exception("error closing job database")

    async def enqueue(
        self,
        *,
        job_name: str,
        commit_id: str,
        user: str,
        priority: int,
        args: str = "",
        spec: dict[str, Any] | None = None,
    ) -> Job:
        job = new_job(job_name, commit_id, user, priority, args, spec)
        await self._run(lambda conn, now: _insert(conn, job))
        return job

    async def list_jobs(self, user: str | None, limit: int | None = None) -> list[Job]:
        where, params = ("", ()) if user is None else ("WHERE user = ?", (user,))
        sql = f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, seq DESC LIMIT ?"
        args = (*params, -1 if limit is None else limit)
        return await self._run(lambda conn, now: [_to_job(row) for row in conn.execute(sql, args)])

    async def count_jobs(self, user: str | None) -> int:
        where, params = ("", ()) if user is None else ("WHERE user = ?", (user,))
        sql = f"SELECT COUNT(*) FROM jobs {where}"
        row = await self._run(lambda conn, now: conn.execute(sql, params).fetchone())
        return int(row[0])

    async def queue_length(self) -> int:
        sql = "SELECT COUNT(*) FROM jobs WHERE status = ?"
        queued = (int(JobStatus.QUEUED),)
        row = await self._run(lambda conn, now: conn.execute(sql, queued).fetchone())
        return int(row[0])

    async def get(self, job_id: str) -> Job | None:
        return await self._run(lambda conn, now: _get(conn, job_id))

    async def cancel(self, job_name: str, user: str | None) -> int:
        return await self._run(lambda conn, now: _cancel(conn, now, job_name, user))

    async def claim(
        self, worker_id: str, user: str | None = None, *, claimer: str | None = None
    ) -> Job | None:
        if await self._nothing_to_claim(user):
            return None
        return await self._run(lambda conn, now: _claim(conn, now, worker_id, user, claimer))

    async def _nothing_to_claim(self, user: str | None) -> bool:
        """True when no job is queued for `user` (every user's for None) and no lease has
        expired: an idle worker's claim, answered on the event loop by one indexed read,
        without a thread or a write lock. Any doubt (old jobs due for deletion, a busy
        database, an error) says False, and the claim takes the full path."""
        async with self._lock:
            conn, now = self._conn, jobs._now()
            if conn is None or not 0 <= now - self._purged_at < PURGE_INTERVAL_S:
                return False
            try:
                conn.execute("PRAGMA busy_timeout = 0")  # never wait on the event loop
                try:
                    return not _claimable(conn, now, self._lease_s, user)
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            except sqlite3.Error:
                return False

    async def update(
        self,
        job_id: str,
        status: JobStatus,
        error: str,
        user: str | None,
        *,
        caller: str | None = None,
        worker_id: str | None = None,
    ) -> Job:
        if status not in UPDATABLE_JOB_STATUSES:
            raise InvalidRequest(f"invalid job status {int(status)}: expected 1, 2 or 3")
        report = _Report(job_id, status, cap_error(error), user, caller, worker_id)
        return await self._run(lambda conn, now: _update(conn, now, report))

    async def _run(self, fn: Callable[[sqlite3.Connection, int], T]) -> T:
        """Run `fn(conn, now)` in a worker thread, one call at a time; first expire lost
        leases, and delete old finished jobs when the last time was PURGE_INTERVAL_S ago
        (or the clock stepped back). A full disk is DISK_FULL, any other SQLite error
        DATABASE_ERROR."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise DatabaseError("job queue is closed")
            now = jobs._now()
            purge = not 0 <= now - self._purged_at < PURGE_INTERVAL_S
            if purge:
                self._purged_at = now
            lease_s = self._lease_s

            def call(conn: sqlite3.Connection) -> T:
                if purge:
                    _purge(conn, now - self._keep_s)
                if lease_s > 0:
                    _expire_leases(conn, now, lease_s)
                return fn(conn, now)

            try:
                return await anyio.to_thread.run_sync(call, conn)
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
                    logger.error("job database: disk full (%s)", exc)
                    raise DiskFull("disk full") from exc
                logger.exception("job database error")
                raise DatabaseError("database error") from exc


@dataclass(frozen=True, slots=True)
class _Report:
    """An UPDATE_JOB as the queue checks it."""

    job_id: str
    status: JobStatus
    error: str
    user: str | None
    caller: str | None
    worker_id: str | None


# Everything below runs in a worker thread.


def _connect(path: Path) -> sqlite3.Connection:
    _make_dirs(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        pass
    else:
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot enable WAL (journal_mode is {mode})")
        with _transaction(conn):
            _migrate(conn, conn.execute("PRAGMA user_version").fetchone()[0])
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Create the schema (version 0) or bring an older file up to date (schema 1 had no
    `claimed_by`, schema 2 no spec, attempts and heartbeat_at)."""
    if version == 0:
        for statement in _SCHEMA:
            conn.execute(statement)
    elif version in (1, 2):
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
        for name, definition in _V3_COLUMNS:
            if name not in columns:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {definition}")
    elif version != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"unsupported job schema version {version}")
    if version != SCHEMA_VERSION:
        for statement in _V2_INDEXES:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _purge(conn: sqlite3.Connection, before: int) -> None:
    """Delete completed, failed and cancelled jobs that ended before `before`. A failure is
    logged, not raised: the request that triggered it goes on."""
    try:
        cursor = conn.execute(
            # `+status`: search by the ended_at index, not by status (most rows are finished)
            "DELETE FROM jobs WHERE ended_at < ? AND +status IN (?, ?, ?)",
            (before, *_FINISHED),
        )
    except sqlite3.Error:
        logger.exception("cannot delete old jobs")
        return
    if cursor.rowcount:
        logger.info("deleted %d finished jobs that ended before %d", cursor.rowcount, before)


def _make_dirs(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir(DIR_MODE)
        except FileExistsError:
            continue
        new.chmod(DIR_MODE)  # exactly 0750, whatever the umask


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock now), COMMIT on success, else ROLLBACK."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _to_job(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in _FIELDS}
    values.update(
        status=JobStatus(row["status"]),
        datasets=tuple(json.loads(row["datasets"])),
        spec=None if row["spec"] is None else json.loads(row["spec"]),
    )
    return Job(**values)


def _get(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _to_job(row)


def _insert(conn: sqlite3.Connection, job: Job) -> None:
    values = {name: getattr(job, name) for name in _FIELDS}
    values.update(
        status=int(job.status),
        datasets=json.dumps(job.datasets),
        spec=None if job.spec is None else json.dumps(job.spec),
    )
    placeholders = ", ".join(f":{name}" for name in values)
    conn.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES ({placeholders})", values)


_LOST = (
    "status = ? AND spec IS NOT NULL AND MAX(started_at, COALESCE(heartbeat_at, started_at)) < ?"
)
"""A running job (with a spec) silent since before the deadline: its lease expired."""


def _claimable(conn: sqlite3.Connection, now: int, lease_s: float, user: str | None) -> bool:
    """A job is queued for `user` (anyone's for None), or a lease has expired."""
    mine, args = ("", ()) if user is None else (" AND user = ?", (user,))
    sql = f"SELECT EXISTS (SELECT 1 FROM jobs WHERE status = ?{mine})"
    if lease_s > 0:
        sql += f" OR EXISTS (SELECT 1 FROM jobs WHERE {_LOST})"
        args = (*args, int(JobStatus.RUNNING), now - lease_s)
    return bool(conn.execute(sql, (int(JobStatus.QUEUED), *args)).fetchone()[0])


def _expire_leases(conn: sqlite3.Connection, now: int, lease_s: float) -> None:
    """Requeue (or fail, after max_attempts) the running jobs whose worker went silent."""
    deadline = now - lease_s
    running = int(JobStatus.RUNNING)
    if conn.execute(f"SELECT 1 FROM jobs WHERE {_LOST} LIMIT 1", (running, deadline)).fetchone():
        with _transaction(conn):
            rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {_LOST}", (running, deadline))
            for job in [_to_job(row) for row in rows]:
                _lease_lost(conn, now, job)


def _lease_lost(conn: sqlite3.Connection, now: int, job: Job) -> None:
    attempts = job.attempts + 1
    max_attempts = int((job.spec or {}).get("max_attempts", 1))
    if attempts >= max_attempts:
        logger.warning("job %s failed: lease expired (worker %s)", job.id, job.worker_id)
        conn.execute(
            "UPDATE jobs SET status = ?, attempts = ?, ended_at = ?, error = ? WHERE id = ?",
            (int(JobStatus.FAILED), attempts, now, LEASE_EXPIRED, job.id),
        )
        return
    logger.warning("job %s requeued: lease expired (worker %s)", job.id, job.worker_id)
    conn.execute(
        "UPDATE jobs SET status = ?, attempts = ?, worker_id = NULL, started_at = NULL,"
        " heartbeat_at = NULL, claimed_by = NULL WHERE id = ?",
        (int(JobStatus.QUEUED), attempts, job.id),
    )


def _cancel(conn: sqlite3.Connection, now: int, job_name: str, user: str | None) -> int:
    """By ID when `job_name` is some job's ID (names are then not looked at), else by name."""
    cancelled = int(JobStatus.CANCELLED)
    with _transaction(conn):
        job = _get(conn, job_name)
        if job is not None:
            if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
                raise JobNotFound(
                    f"job {job.id} is {job.status.name.lower()}, not queued or running"
                )
            if user is not None and job.user != user:
                raise PermissionDenied(CANCEL_DENIED)
            sql = "UPDATE jobs SET status = ?, ended_at = ? WHERE id = ?"
            conn.execute(sql, (cancelled, now, job.id))
            return 1
        active = "job_name = ? AND status IN (?, ?)"
        rows = conn.execute(f"SELECT user FROM jobs WHERE {active}", (job_name, *_ACTIVE))
        owners = {row["user"] for row in rows}
        if not owners:
            raise JobNotFound(f"no queued or running job named {job_name!r}")
        if user is not None and user not in owners:
            raise PermissionDenied(CANCEL_DENIED)
        cursor = conn.execute(
            f"UPDATE jobs SET status = ?, ended_at = ? WHERE {active} AND (? IS NULL OR user = ?)",
            (cancelled, now, job_name, *_ACTIVE, user, user),
        )
        return cursor.rowcount


def _claim(
    conn: sqlite3.Connection, now: int, worker_id: str, user: str | None, claimer: str | None
) -> Job | None:
    mine = "" if user is None else " AND user = ?"
    with _transaction(conn):
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE status = ?{mine} ORDER BY priority DESC, seq LIMIT 1",
            (int(JobStatus.QUEUED),) if user is None else (int(JobStatus.QUEUED), user),
        ).fetchone()
        if row is None:
            return None
        job = replace(
            _to_job(row),
            status=JobStatus.RUNNING,
            started_at=now,
            worker_id=worker_id,
            claimed_by=claimer,
        )
        conn.execute(
            "UPDATE jobs SET status = ?, started_at = ?, worker_id = ?, claimed_by = ? WHERE id = ?",
            (int(job.status), job.started_at, worker_id, claimer, job.id),
        )
        return job


def _update(conn: sqlite3.Connection, now: int, report: _Report) -> Job:
    job_id, status = report.job_id, report.status
    with _transaction(conn):
        job = _get(conn, job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        if report.user is not None and job.user != report.user:
            raise PermissionDenied("You can only update your own jobs")
        if report.caller is not None and job.claimed_by not in (None, report.caller):
            raise PermissionDenied(CLAIMED_DENIED)
        if job.status == JobStatus.CANCELLED:
            raise JobCancelled(f"job {job_id} was cancelled")
        if report.worker_id is not None and report.worker_id != job.worker_id:
            raise InvalidRequest(REASSIGNED)
        if job.status != JobStatus.RUNNING:
            raise InvalidRequest(f"job {job_id} is not running (it is {job.status.name.lower()})")
        if status == JobStatus.RUNNING:
            conn.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (now, job_id))
            return replace(job, heartbeat_at=now)
        job = replace(job, status=status, ended_at=now, error=report.error or None)
        conn.execute(
            "UPDATE jobs SET status = ?, ended_at = ?, error = ? WHERE id = ?",
            (int(status), job.ended_at, job.error, job_id),
        )
        return job
