"""The JobQueue contract over both backends (SqliteJobQueue and RedisJobQueue): order, claims
(also racing across queue objects and processes), updates, cancels, persistence, the job
JSON, a closed queue, the claimer rule, the error cap and deletion of old jobs. SQLite alone:
file modes, database failures, a full disk and the schema 1 and 2 migrations."""

import dataclasses
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from fetchml.protocol.enums import ErrorCode, JobStatus
from fetchml.server import jobs, jobs_sqlite
from fetchml.server.errors import (
    DatabaseError,
    DiskFull,
    InvalidRequest,
    JobCancelled,
    JobNotFound,
    PermissionDenied,
)
from fetchml.server.jobs import Job, JobQueue
from fetchml.server.jobs_redis import RedisJobQueue
from fetchml.server.jobs_sqlite import SqliteJobQueue
from tests.support import jobqueues
from tests.support.clock import Clock
from tests.support.jobqueues import JobStore

REPO = Path(__file__).resolve().parents[2]
C1 = "0123456789abcdef0123456789abcdef01234567"
C2 = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock.install(monkeypatch, jobs)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.db"


store = jobqueues.store
job_redis = jobqueues.job_redis


@pytest.fixture
async def queue(store: JobStore) -> AsyncIterator[JobQueue]:
    q = await store.open()
    yield q
    await q.close()


@pytest.fixture
async def sqlite_queue(db_path: Path) -> AsyncIterator[SqliteJobQueue]:
    q = await SqliteJobQueue.open(db_path)
    yield q
    await q.close()


async def add(q: JobQueue, name: str, user: str = "alice", priority: int = 5) -> Job:
    return await q.enqueue(job_name=name, commit_id=C1, user=user, priority=priority)


# --- enqueue, list, queue_length -------------------------------------------------------------


async def test_enqueue_returns_a_queued_job(queue: JobQueue, clock: Clock) -> None:
    job = await queue.enqueue(job_name="resnet", commit_id=C2, user="bob", priority=7)
    assert uuid.UUID(job.id).version == 4
    assert job == Job(
        id=job.id,
        job_name="resnet",
        status=JobStatus.QUEUED,
        priority=7,
        created_at=clock.t,
        commit_id=C2,
        user="bob",
    )
    assert (job.args, job.datasets, job.started_at, job.ended_at) == ("", (), None, None)
    assert (job.worker_id, job.error) == (None, None)
    assert await queue.get(job.id) == job
    assert await queue.get("no-such-id") is None


@pytest.mark.parametrize(
    ("commit_id", "priority"),
    [(C1, -1), (C1, 256), (C1.upper(), 5), (C1[:-1], 5), (C1 + "0", 5), ("g" * 40, 5)],
)
async def test_enqueue_rejects_bad_priority_or_commit(
    queue: JobQueue, commit_id: str, priority: int
) -> None:
    with pytest.raises(InvalidRequest):
        await queue.enqueue(job_name="x", commit_id=commit_id, user="a", priority=priority)
    assert await queue.list_jobs(None) == []


async def test_enqueue_accepts_priority_bounds(queue: JobQueue) -> None:
    assert (await add(queue, "low", priority=0)).priority == 0
    assert (await add(queue, "high", priority=255)).priority == 255


async def test_list_is_newest_first_ties_later_insertion_first(
    queue: JobQueue, clock: Clock
) -> None:
    created = {}
    for name, t, user in [
        ("a", 100, "alice"),
        ("b", 100, "bob"),
        ("c", 200, "alice"),
        ("d", 100, "alice"),
        ("e", 50, "bob"),
    ]:
        clock.t = t
        created[name] = await add(queue, name, user)
    assert [j.job_name for j in await queue.list_jobs(None)] == ["c", "d", "b", "a", "e"]
    assert [j.job_name for j in await queue.list_jobs("alice")] == ["c", "d", "a"]
    assert [j.job_name for j in await queue.list_jobs("bob")] == ["b", "e"]
    assert await queue.list_jobs("carol") == []
    assert (await queue.list_jobs(None))[0] == created["c"]


async def test_queue_length_counts_queued_jobs_of_all_users(queue: JobQueue) -> None:
    assert await queue.queue_length() == 0
    await add(queue, "a", "alice")
    await add(queue, "b", "alice")
    await add(queue, "c", "bob")
    assert await queue.queue_length() == 3
    await queue.claim("w1")
    assert await queue.queue_length() == 2
    await queue.cancel("c", None)
    assert await queue.queue_length() == 1


# --- claim -----------------------------------------------------------------------------------


async def test_claim_highest_priority_first_then_fifo(queue: JobQueue, clock: Clock) -> None:
    order = [
        ("p5-first", 5),
        ("p9-first", 9),
        ("p1", 1),
        ("p5-second", 5),
        ("p9-second", 9),
        ("p0", 0),
        ("p255", 255),
    ]
    for i, (name, priority) in enumerate(order):
        clock.t = 1000 - i  # FIFO follows insertion order, even when the clock steps back
        await add(queue, name, priority=priority)
    clock.t = 5000
    claimed = []
    while (job := await queue.claim("w1")) is not None:
        assert job.status is JobStatus.RUNNING
        assert (job.started_at, job.worker_id) == (5000, "w1")
        assert await queue.get(job.id) == job
        claimed.append(job.job_name)
    assert claimed == ["p255", "p9-first", "p9-second", "p5-first", "p5-second", "p1", "p0"]


async def test_claim_on_empty_queue_returns_none(queue: JobQueue) -> None:
    assert await queue.claim("w1") is None
    await add(queue, "only")
    assert await queue.claim("w1") is not None
    assert await queue.claim("w1") is None


async def test_50_concurrent_claims_over_20_jobs(queue: JobQueue) -> None:
    ids = {(await add(queue, f"job{i}", priority=i % 3)).id for i in range(20)}
    results: list[Job | None] = []

    async def claim(worker: int) -> None:
        results.append(await queue.claim(f"w{worker}"))

    async with anyio.create_task_group() as tg:
        for worker in range(50):
            tg.start_soon(claim, worker)
    got = [job.id for job in results if job is not None]
    assert len(got) == 20
    assert set(got) == ids
    assert results.count(None) == 30
    assert await queue.queue_length() == 0


async def test_claim_race_between_two_queues_on_one_store(store: JobStore) -> None:
    q = await store.open()
    ids = {(await add(q, f"job{i}")).id for i in range(100)}
    await q.close()
    barrier = threading.Barrier(2, timeout=30)
    claimed: dict[str, list[str]] = {"t1": [], "t2": []}

    def run(worker: str) -> None:
        async def main() -> None:
            mine = await store.open()
            barrier.wait()
            while (job := await mine.claim(worker)) is not None:
                claimed[worker].append(job.id)
            await mine.close()

        anyio.run(main)

    threads = [threading.Thread(target=run, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    all_claimed = claimed["t1"] + claimed["t2"]
    assert len(all_claimed) == len(set(all_claimed)) == 100
    assert set(all_claimed) == ids


CLAIMER = """
import json, sys
from pathlib import Path
import anyio
from tests.support.jobqueues import open_store

async def main() -> None:
    q = await open_store(sys.argv[1], sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    ids = []
    while (job := await q.claim(sys.argv[3])) is not None:
        ids.append(job.id)
    await q.close()
    print(json.dumps(ids), flush=True)

anyio.run(main)
"""


def test_claim_race_between_two_processes(store: JobStore) -> None:
    async def setup() -> set[str]:
        q = await store.open()
        ids = {(await add(q, f"job{i}", priority=i % 4)).id for i in range(150)}
        await q.close()
        return ids

    ids = anyio.run(setup)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, store.kind, store.location, f"proc{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in (1, 2)
    ]
    for p in procs:  # both have opened the database; now let them race
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
    outputs = [p.communicate("go\n", timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    claimed = [job_id for out in outputs for job_id in json.loads(out)]
    assert len(claimed) == len(set(claimed)) == 150
    assert set(claimed) == ids


# --- update ----------------------------------------------------------------------------------


async def test_update_completed_and_failed(queue: JobQueue, clock: Clock) -> None:
    await add(queue, "a")
    await add(queue, "b")
    a = await queue.claim("w1")
    b = await queue.claim("w2")
    assert a is not None and b is not None
    clock.t += 60
    done = await queue.update(a.id, JobStatus.COMPLETED, "", None)
    assert done.status is JobStatus.COMPLETED
    assert (done.ended_at, done.error, done.worker_id) == (clock.t, None, "w1")
    assert await queue.get(a.id) == done
    failed = await queue.update(b.id, JobStatus.FAILED, "CUDA out of memory", "alice")
    assert (failed.status, failed.error, failed.ended_at) == (
        JobStatus.FAILED,
        "CUDA out of memory",
        clock.t,
    )
    assert await queue.get(b.id) == failed


async def test_update_running_is_a_heartbeat(queue: JobQueue, clock: Clock) -> None:
    await add(queue, "a")
    job = await queue.claim("w1")
    assert job is not None
    assert job.heartbeat_at is None
    clock.t += 10
    again = await queue.update(job.id, JobStatus.RUNNING, "", None)
    assert again == replace(job, heartbeat_at=clock.t)
    assert await queue.get(job.id) == again


async def test_update_errors(queue: JobQueue) -> None:
    queued = await add(queue, "queued")
    await add(queue, "run", priority=9)
    running = await queue.claim("w1")
    assert running is not None
    with pytest.raises(JobNotFound):
        await queue.update("no-such-id", JobStatus.COMPLETED, "", None)
    with pytest.raises(InvalidRequest, match=r"not running.*queued"):
        await queue.update(queued.id, JobStatus.COMPLETED, "", None)
    with pytest.raises(PermissionDenied):
        await queue.update(running.id, JobStatus.COMPLETED, "", "bob")
    with pytest.raises(PermissionDenied):  # scope is checked before state
        await queue.update(queued.id, JobStatus.COMPLETED, "", "bob")
    for bad in (JobStatus.QUEUED, JobStatus.CANCELLED):
        with pytest.raises(InvalidRequest):
            await queue.update(running.id, bad, "", None)
    assert await queue.get(running.id) == running  # nothing above changed it
    await queue.update(running.id, JobStatus.COMPLETED, "", "alice")
    with pytest.raises(InvalidRequest, match=r"not running.*completed"):
        await queue.update(running.id, JobStatus.FAILED, "late", None)
    with pytest.raises(InvalidRequest, match=r"not running"):
        await queue.update(running.id, JobStatus.RUNNING, "", None)


async def test_every_refusal_has_its_code_and_exact_message(queue: JobQueue) -> None:
    job = await add(queue, "train")
    refusals: list[tuple[Callable[[], Awaitable[object]], type[Exception], str]] = [
        (lambda: queue.update("nope", JobStatus.COMPLETED, "", None), JobNotFound,
         "job nope not found"),
        (lambda: queue.update(job.id, JobStatus.COMPLETED, "", None), InvalidRequest,
         f"job {job.id} is not running (it is queued)"),
        (lambda: queue.update(job.id, JobStatus.COMPLETED, "", "bob"), PermissionDenied,
         "You can only update your own jobs"),
        (lambda: queue.update(job.id, JobStatus.QUEUED, "", None), InvalidRequest,
         "invalid job status 0: expected 1, 2 or 3"),
        (lambda: queue.cancel("nope", None), JobNotFound,
         "no queued or running job named 'nope'"),
        (lambda: queue.cancel("train", "bob"), PermissionDenied,
         "You can only cancel your own jobs"),
        (lambda: add(queue, "x", priority=256), InvalidRequest,
         "priority must be 0..255, got 256"),
        (lambda: queue.enqueue(job_name="x", commit_id="0", user="a", priority=5),
         InvalidRequest, "commit_id must be 40 lowercase hex characters"),
    ]  # fmt: skip
    for call, error, message in refusals:
        with pytest.raises(error) as info:
            await call()
        assert info.value.args == (message,)
    assert await queue.list_jobs(None) == [job]


# --- cancel ----------------------------------------------------------------------------------


async def test_cancel_own_jobs_only(queue: JobQueue, clock: Clock) -> None:
    a1 = await add(queue, "train", "alice")
    a2 = await add(queue, "train", "alice", priority=9)
    b1 = await add(queue, "train", "bob")
    other = await add(queue, "eval", "alice")
    running = await queue.claim("w1")
    assert running is not None and running.id == a2.id
    clock.t += 5
    assert await queue.cancel("train", "alice") == 2
    for job_id in (a1.id, a2.id):
        job = await queue.get(job_id)
        assert job is not None
        assert (job.status, job.ended_at) == (JobStatus.CANCELLED, clock.t)
    assert (await queue.get(b1.id)) == b1
    assert (await queue.get(other.id)) == other
    with pytest.raises(PermissionDenied) as info:
        await queue.cancel("train", "alice")  # only bob's is left
    assert info.value.message == "You can only cancel your own jobs"
    assert info.value.code is ErrorCode.PERMISSION_DENIED
    with pytest.raises(JobCancelled, match=rf"^job {a2.id} was cancelled$"):
        await queue.update(a2.id, JobStatus.COMPLETED, "", None)


async def test_cancel_all_and_not_found(queue: JobQueue) -> None:
    with pytest.raises(JobNotFound):
        await queue.cancel("train", None)
    await add(queue, "train", "alice")
    await add(queue, "train", "bob")
    await add(queue, "train", "carol")
    done = await queue.claim("w1")
    assert done is not None
    await queue.update(done.id, JobStatus.COMPLETED, "", None)
    assert await queue.cancel("train", None) == 2  # the completed one is not counted
    assert await queue.claim("w1") is None  # cancelled jobs are never claimed
    assert await queue.queue_length() == 0
    with pytest.raises(JobNotFound):
        await queue.cancel("train", None)
    with pytest.raises(JobNotFound):  # not found wins over permission for other users
        await queue.cancel("train", "dave")


# --- persistence, JSON, files ----------------------------------------------------------------


async def test_jobs_survive_reopen(store: JobStore, clock: Clock) -> None:
    q = await store.open()
    for i in range(4):
        await add(q, f"job{i}", priority=i % 2)
    running = await q.claim("w1")
    before = await q.list_jobs(None)
    await q.close()
    q = await store.open()
    try:
        assert await q.list_jobs(None) == before
        assert running is not None and await q.get(running.id) == running
        assert [(await q.claim("w2")) is not None for _ in range(4)] == [True] * 3 + [False]
    finally:
        await q.close()


async def test_to_json_exact_shape(queue: JobQueue, clock: Clock) -> None:
    job = await queue.enqueue(job_name="resnet50-baseline", commit_id=C1, user="alice", priority=5)
    assert job.to_json() == {
        "id": job.id,
        "job_name": "resnet50-baseline",
        "args": "",
        "status": "queued",
        "priority": 5,
        "created_at": clock.t,
        "started_at": None,
        "ended_at": None,
        "worker_id": None,
        "claimed_by": None,
        "error": None,
        "datasets": [],
        "metadata": {"commit_id": C1, "user": "alice"},
        "spec": None,
        "attempts": 0,
        "heartbeat_at": None,
    }
    clock.t += 1
    claimed = await queue.claim("gpu-1", claimer="wendy")
    assert claimed is not None
    clock.t += 1
    failed = await queue.update(job.id, JobStatus.FAILED, "boom", None)
    data = failed.to_json()
    assert json.loads(json.dumps(data)) == data
    assert list(data) == [
        "id",
        "job_name",
        "args",
        "status",
        "priority",
        "created_at",
        "started_at",
        "ended_at",
        "worker_id",
        "claimed_by",
        "error",
        "datasets",
        "metadata",
        "spec",
        "attempts",
        "heartbeat_at",
    ]
    assert (data["status"], data["started_at"], data["ended_at"]) == (
        "failed",
        clock.t - 1,
        clock.t,
    )
    assert (data["worker_id"], data["claimed_by"], data["error"]) == ("gpu-1", "wendy", "boom")
    statuses = {s: dataclasses.replace(job, status=s).to_json()["status"] for s in JobStatus}
    assert statuses == {
        JobStatus.QUEUED: "queued",
        JobStatus.RUNNING: "running",
        JobStatus.COMPLETED: "completed",
        JobStatus.FAILED: "failed",
        JobStatus.CANCELLED: "cancelled",
    }
    with_datasets = dataclasses.replace(job, datasets=("mnist", "cifar"))
    assert with_datasets.to_json()["datasets"] == ["mnist", "cifar"]


async def test_files_modes_wal_and_schema_version(
    sqlite_queue: SqliteJobQueue, db_path: Path
) -> None:
    await add(sqlite_queue, "a")
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o750
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == jobs_sqlite.SCHEMA_VERSION
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE status = 0 ORDER BY priority DESC, seq"
        ).fetchall()
        assert "jobs_claim_order" in str(plan) and "TEMP B-TREE" not in str(plan)
    finally:
        conn.close()


async def test_mode_is_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        q = await SqliteJobQueue.open(tmp_path / "a" / "b" / "jobs.db")
    finally:
        os.umask(old)
    await q.close()
    assert stat.S_IMODE((tmp_path / "a" / "b" / "jobs.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o750


# --- database failures -----------------------------------------------------------------------


def _assert_clean(exc: DatabaseError, path: Path) -> None:
    assert exc.code is ErrorCode.DATABASE_ERROR
    assert exc.message == "database error"
    assert str(path) not in exc.message + exc.details


async def test_path_is_a_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="fetchml.server.jobs_sqlite")
    with pytest.raises(DatabaseError) as info:
        await SqliteJobQueue.open(tmp_path)
    _assert_clean(info.value, tmp_path)
    assert caplog.records and caplog.records[0].exc_info is not None


async def test_corrupt_file(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"this is not a sqlite database\n" * 200)
    with pytest.raises(DatabaseError) as info:
        await SqliteJobQueue.open(db_path)
    _assert_clean(info.value, db_path)


async def test_newer_schema_version_is_refused(db_path: Path) -> None:
    await (await SqliteJobQueue.open(db_path)).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {jobs_sqlite.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseError):
        await SqliteJobQueue.open(db_path)


async def test_sqlite_errors_become_database_error(
    sqlite_queue: SqliteJobQueue, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = sqlite_queue
    job = await add(queue, "a")
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TABLE jobs")
    conn.close()
    caplog.set_level(logging.ERROR, logger="fetchml.server.jobs_sqlite")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: add(queue, "b"),
        lambda: queue.list_jobs(None),
        queue.queue_length,
        lambda: queue.get(job.id),
        lambda: queue.claim("w1"),
        lambda: queue.cancel("a", None),
        lambda: queue.update(job.id, JobStatus.COMPLETED, "", None),
    ]
    for call in calls:
        with pytest.raises(DatabaseError) as info:
            await call()
        _assert_clean(info.value, db_path)
        assert "jobs" not in info.value.message  # no SQL either
    assert len(caplog.records) == len(calls)
    assert all("no such table" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_closed_queue_refuses_calls(store: JobStore) -> None:
    q = await store.open()
    await q.close()
    await q.close()  # idempotent
    with pytest.raises(DatabaseError):
        await q.claim("w1")


def test_both_queues_satisfy_the_protocol() -> None:
    queue_types: tuple[type[JobQueue], ...] = (SqliteJobQueue, RedisJobQueue)  # checked by mypy
    assert len(queue_types) == 2


# --- the claimer, the error cap, listing limits ----------------------------------------------


async def test_claimed_by_is_set_and_only_the_claimer_may_update(
    queue: JobQueue,
) -> None:
    done = await add(queue, "done", priority=9)
    await add(queue, "run")
    legacy = await add(queue, "legacy", priority=0)
    first = await queue.claim("w1", claimer="wendy")
    second = await queue.claim("w2", claimer="wendy")
    unnamed = await queue.claim("w3")  # no claimer given: nobody in particular
    assert first is not None and second is not None and unnamed is not None
    assert (first.id, first.claimed_by) == (done.id, "wendy")
    assert await queue.get(first.id) == first
    assert (unnamed.id, unnamed.claimed_by) == (legacy.id, None)

    with pytest.raises(PermissionDenied) as info:
        await queue.update(first.id, JobStatus.COMPLETED, "", None, caller="walt")
    assert info.value.message == "job claimed by another user"
    assert await queue.get(first.id) == first  # unchanged
    with pytest.raises(JobNotFound):  # not found is checked first
        await queue.update("no-such-id", JobStatus.COMPLETED, "", None, caller="walt")
    finished = await queue.update(first.id, JobStatus.COMPLETED, "", None, caller="wendy")
    assert (finished.status, finished.claimed_by) == (JobStatus.COMPLETED, "wendy")
    with pytest.raises(PermissionDenied, match="claimed by another user"):  # before not-running
        await queue.update(first.id, JobStatus.FAILED, "", None, caller="walt")
    with pytest.raises(InvalidRequest, match="not running"):
        await queue.update(first.id, JobStatus.FAILED, "", None, caller="wendy")

    # caller None (a role with `*`) may update any job; so may anyone a job nobody claimed.
    assert (await queue.update(second.id, JobStatus.FAILED, "x", None)).status is JobStatus.FAILED
    updated = await queue.update(unnamed.id, JobStatus.COMPLETED, "", None, caller="walt")
    assert updated.status is JobStatus.COMPLETED


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        ("x" * 4096, "x" * 4096),
        ("x" * 4097, "x" * 4096),
        ("x" + "é" * 2500, "x" + "é" * 2047),  # byte 4096 is the first half of an é
        ("€" * 2000, "€" * 1365),  # 3-byte characters: 1365 * 3 = 4095
        ("short", "short"),
    ],
    ids=["exact", "one-over", "2-byte-cut", "3-byte-cut", "short"],
)
async def test_update_keeps_the_first_4096_bytes_of_the_error(
    queue: JobQueue, error: str, kept: str
) -> None:
    await add(queue, "a")
    job = await queue.claim("w1")
    assert job is not None
    failed = await queue.update(job.id, JobStatus.FAILED, error, None)
    assert failed.error == kept
    assert await queue.get(job.id) == failed
    assert len(kept.encode()) <= jobs.MAX_ERROR_BYTES


async def test_list_limit_and_count(queue: JobQueue, clock: Clock) -> None:
    for i, user in enumerate(["alice", "bob", "alice", "alice"]):
        clock.t = 100 + i
        await add(queue, f"j{i}", user)
    assert [j.job_name for j in await queue.list_jobs(None, limit=2)] == ["j3", "j2"]
    assert [j.job_name for j in await queue.list_jobs("alice", limit=2)] == ["j3", "j2"]
    assert [j.job_name for j in await queue.list_jobs("bob", limit=5)] == ["j1"]
    assert await queue.list_jobs(None, limit=0) == []
    assert (await queue.count_jobs(None), await queue.count_jobs("alice")) == (4, 3)
    assert await queue.count_jobs("carol") == 0


# --- deleting old finished jobs --------------------------------------------------------------


async def finished_jobs(q: JobQueue, clock: Clock) -> dict[str, Job]:
    """One job in each state; the finished ones end at clock.t."""
    made = {name: await add(q, name) for name in ("completed", "failed", "cancelled")}
    for name in ("completed", "failed"):
        job = await q.claim("w")
        assert job is not None and job.job_name == name
        await q.update(job.id, JobStatus[name.upper()], "", None)
    await q.cancel("cancelled", None)
    made["queued"] = await add(q, "queued")
    made["running"] = await add(q, "running", priority=9)
    assert (await q.claim("w")) is not None
    return made


async def test_old_finished_jobs_are_deleted_at_open(store: JobStore, clock: Clock) -> None:
    q = await store.open(keep_days=90)
    made = await finished_jobs(q, clock)
    await q.close()
    clock.t += 90 * 86400  # exactly keep_days: kept
    q = await store.open(keep_days=90)
    assert len(await q.list_jobs(None)) == 5
    await q.close()
    clock.t += 1
    q = await store.open(keep_days=90)
    try:
        left = {job.job_name for job in await q.list_jobs(None)}
        assert left == {"queued", "running"}  # never deleted, however old
        assert await q.get(made["completed"].id) is None
    finally:
        await q.close()


async def test_old_finished_jobs_are_deleted_at_most_once_an_hour(
    store: JobStore, clock: Clock
) -> None:
    q = await store.open(keep_days=1)
    try:
        await finished_jobs(q, clock)
        ended = clock.t
        clock.t = ended + 86400 - 10  # not old enough yet; the last deletion was a day ago
        assert await q.count_jobs(None) == 5  # this call deleted (nothing)
        clock.t = ended + 86400 + 10  # old enough, but the last deletion was 20 s ago
        assert await q.count_jobs(None) == 5
        clock.t = ended + 86400 - 10 + jobs.PURGE_INTERVAL_S
        assert await q.count_jobs(None) == 2
    finally:
        await q.close()


# --- the schema 1 file made by earlier versions ----------------------------------------------

SCHEMA_1 = (
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
        user       TEXT    NOT NULL
    )""",
    "CREATE INDEX jobs_claim_order ON jobs (status, priority DESC, seq)",
    "CREATE INDEX jobs_by_name ON jobs (job_name, status)",
    "PRAGMA user_version = 1",
)


async def test_a_schema_1_file_is_migrated(db_path: Path, clock: Clock) -> None:
    db_path.parent.mkdir()
    conn = sqlite3.connect(db_path)
    for statement in SCHEMA_1:
        conn.execute(statement)
    row = "INSERT INTO jobs (id, job_name, status, priority, created_at, started_at, worker_id,"
    conn.execute(
        row + " commit_id, user) VALUES (?, 'old', 1, 5, 1000, 1001, 'w0', ?, 'alice')", ("j1", C1)
    )
    conn.execute(
        row + " commit_id, user) VALUES (?, 'waiting', 0, 5, 1002, NULL, NULL, ?, 'bob')",
        ("j2", C1),
    )
    conn.commit()
    conn.close()

    for _ in range(2):  # and opening it again changes nothing
        q = await SqliteJobQueue.open(db_path)
        try:
            old = await q.get("j1")
            assert old is not None
            assert (old.status, old.worker_id, old.claimed_by) == (JobStatus.RUNNING, "w0", None)
            assert [job.id for job in await q.list_jobs(None)] == ["j2", "j1"]
        finally:
            await q.close()
    q = await SqliteJobQueue.open(db_path)
    try:
        claimed = await q.claim("w1", claimer="wendy")
        assert claimed is not None and (claimed.id, claimed.claimed_by) == ("j2", "wendy")
        # A job claimed before the upgrade has no claimer: any worker may finish it.
        done = await q.update("j1", JobStatus.COMPLETED, "", None, caller="walt")
        assert done.status is JobStatus.COMPLETED
    finally:
        await q.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == jobs_sqlite.SCHEMA_VERSION == 3
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"jobs_by_time", "jobs_by_user", "jobs_by_end"} <= indexes
    finally:
        conn.close()


async def test_a_schema_2_file_gains_spec_attempts_and_heartbeat(
    db_path: Path, clock: Clock
) -> None:
    db_path.parent.mkdir()
    conn = sqlite3.connect(db_path)
    for statement in SCHEMA_1[:-1]:
        conn.execute(statement)
    conn.execute("ALTER TABLE jobs ADD COLUMN claimed_by TEXT")
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO jobs (id, job_name, status, priority, created_at, started_at, worker_id,"
        " commit_id, user, claimed_by) VALUES ('j1', 'old', 1, 5, 1000, 1001, 'w0', ?, 'alice',"
        " 'wendy')",
        (C1,),
    )
    conn.commit()
    conn.close()
    q = await SqliteJobQueue.open(db_path, lease_s=60)  # the old job is long past any lease
    try:
        old = await q.get("j1")
        assert old is not None
        assert (old.spec, old.attempts, old.heartbeat_at) == (None, 0, None)
        assert (old.status, old.claimed_by) == (JobStatus.RUNNING, "wendy")  # no spec: no lease
        beat = await q.update("j1", JobStatus.RUNNING, "", None)
        assert beat.heartbeat_at == clock.t
    finally:
        await q.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        conn.close()


# --- a full disk -----------------------------------------------------------------------------


async def test_a_full_database_is_disk_full(sqlite_queue: SqliteJobQueue) -> None:
    """SQLite's own SQLITE_FULL (here from max_page_count, as from ENOSPC on a full disk)."""
    queue = sqlite_queue
    assert queue._conn is not None
    pages = queue._conn.execute("PRAGMA page_count").fetchone()[0]
    queue._conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    added = []
    with pytest.raises(DiskFull) as info:
        for i in range(100):  # a 4 KiB page holds a few dozen jobs
            added.append(await add(queue, f"job{i}"))
    assert (info.value.code, info.value.message) == (ErrorCode.DISK_FULL, "disk full")
    assert 0 < len(added) < 100
    assert {job.id for job in await queue.list_jobs(None)} == {job.id for job in added}
    queue._conn.execute("PRAGMA max_page_count = 1073741823")
    added.append(await add(queue, "after"))
    assert await queue.count_jobs(None) == len(added)
