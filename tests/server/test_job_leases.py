"""The JobQueue's revision 4 rules, over both backends: specs, leases, cancel by ID, UPDATE_JOB's worker_id and
the order of its checks."""

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fetchml.protocol.enums import ErrorCode, JobStatus
from fetchml.protocol.jobspec import parse_spec
from fetchml.server import jobs
from fetchml.server.errors import InvalidRequest, JobCancelled, JobNotFound, PermissionDenied
from fetchml.server.jobs import Job, JobQueue
from tests.support import jobqueues
from tests.support.clock import Clock
from tests.support.jobqueues import JobStore

C1 = "0123456789abcdef0123456789abcdef01234567"
LEASE_S = 120


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock.install(monkeypatch, jobs)


store = jobqueues.store
job_redis = jobqueues.job_redis


@pytest.fixture
async def queue(store: JobStore, clock: Clock) -> AsyncIterator[JobQueue]:
    q = await store.open(lease_s=LEASE_S)
    yield q
    await q.close()


def spec_of(**keys: Any) -> tuple[str, dict[str, Any]]:
    text = '{"command":["python","train.py"]' + "".join(f',"{k}":{v}' for k, v in keys.items())
    return text + "}", parse_spec(text + "}")


async def add(
    q: JobQueue, name: str = "train", user: str = "alice", priority: int = 5, **keys: Any
) -> Job:
    args, spec = spec_of(**keys)
    return await q.enqueue(
        job_name=name, commit_id=C1, user=user, priority=priority, args=args, spec=spec
    )


async def claimed(q: JobQueue, worker: str = "w1") -> Job:
    job = await q.claim(worker, claimer="wendy")
    assert job is not None
    return job


async def test_the_spec_is_stored_with_its_text(queue: JobQueue) -> None:
    job = await add(queue, max_attempts=3)
    again = await queue.get(job.id)
    assert again == job
    assert job.args == '{"command":["python","train.py"],"max_attempts":3}'
    assert job.spec == {
        "command": ["python", "train.py"],
        "env": {},
        "workdir": None,
        "max_attempts": 3,
        "timeout_s": 0,
    }
    assert (job.attempts, job.heartbeat_at) == (0, None)


# -- leases -----------------------------------------------------------------------------


async def test_a_silent_job_is_requeued_in_its_place(queue: JobQueue, clock: Clock) -> None:
    first = await add(queue, "first", priority=7, max_attempts=2)
    later = await add(queue, "later", priority=7)
    lost = await claimed(queue)
    assert lost.id == first.id
    clock.t += LEASE_S  # exactly lease_s old: still held
    assert (await queue.get(first.id)) == lost
    clock.t += 1
    back = await queue.get(first.id)  # any operation expires it first
    assert back == Job(**{**vars_of(first), "attempts": 1})
    assert (await claimed(queue, "w2")).id == first.id  # ahead of `later`, queued after it
    assert (await queue.get(later.id)) == later


async def test_a_heartbeat_extends_the_lease(queue: JobQueue, clock: Clock) -> None:
    job = await add(queue)
    await claimed(queue)
    for _ in range(3):
        clock.t += LEASE_S
        beat = await queue.update(job.id, JobStatus.RUNNING, "", None, worker_id="w1")
        assert (beat.status, beat.heartbeat_at) == (JobStatus.RUNNING, clock.t)
    clock.t += LEASE_S + 1
    failed = await queue.get(job.id)
    assert failed is not None
    assert (failed.status, failed.error, failed.ended_at) == (
        JobStatus.FAILED,
        "lease expired",
        clock.t,
    )
    assert (failed.attempts, failed.worker_id) == (1, "w1")


async def test_max_attempts_then_lease_expired(queue: JobQueue, clock: Clock) -> None:
    job = await add(queue, max_attempts=3)
    for attempt in range(1, 4):
        await claimed(queue, f"w{attempt}")
        clock.t += LEASE_S + 1
        status = await queue.list_jobs(None)
        assert [(j.status, j.attempts) for j in status] == [
            (JobStatus.QUEUED if attempt < 3 else JobStatus.FAILED, attempt)
        ]
    assert await queue.claim("w4") is None
    done = await queue.get(job.id)
    assert done is not None and done.error == "lease expired"


async def test_a_requeued_job_refuses_its_old_worker(queue: JobQueue, clock: Clock) -> None:
    job = await add(queue, max_attempts=2)
    await claimed(queue, "w1")
    clock.t += LEASE_S + 1
    with pytest.raises(InvalidRequest, match=r"^job reassigned$"):  # queued, held by nobody
        await queue.update(job.id, JobStatus.COMPLETED, "", None, worker_id="w1")
    await claimed(queue, "w2")
    with pytest.raises(InvalidRequest, match=r"^job reassigned$"):
        await queue.update(job.id, JobStatus.RUNNING, "", None, worker_id="w1")
    done = await queue.update(job.id, JobStatus.COMPLETED, "", None, worker_id="w2")
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)


async def test_jobs_without_a_spec_hold_no_lease(queue: JobQueue, clock: Clock) -> None:
    job = await queue.enqueue(job_name="old", commit_id=C1, user="alice", priority=5)
    await claimed(queue)
    clock.t += 10 * LEASE_S
    still = await queue.get(job.id)
    assert still is not None and (still.status, still.attempts) == (JobStatus.RUNNING, 0)


async def test_lease_0_turns_leases_off(store: JobStore, clock: Clock) -> None:
    q = await store.open(lease_s=0)
    try:
        job = await add(q)
        await claimed(q)
        clock.t += 10**6
        still = await q.get(job.id)
        assert still is not None and still.status is JobStatus.RUNNING
    finally:
        await q.close()


async def test_a_final_failed_report_stays_failed(queue: JobQueue, clock: Clock) -> None:
    job = await add(queue, max_attempts=5)
    await claimed(queue)
    await queue.update(job.id, JobStatus.FAILED, "CUDA out of memory", None, worker_id="w1")
    clock.t += 10 * LEASE_S
    assert await queue.claim("w2") is None
    failed = await queue.get(job.id)
    assert failed is not None and (failed.status, failed.attempts) == (JobStatus.FAILED, 0)


# -- cancel by ID -----------------------------------------------------------------------


async def test_cancel_by_id_cancels_that_job_only(queue: JobQueue, clock: Clock) -> None:
    one = await add(queue, "train")
    two = await add(queue, "train")
    clock.t += 3
    assert await queue.cancel(two.id, "alice") == 1
    cancelled = await queue.get(two.id)
    assert cancelled is not None
    assert (cancelled.status, cancelled.ended_at) == (JobStatus.CANCELLED, clock.t)
    assert await queue.get(one.id) == one
    with pytest.raises(JobNotFound, match=rf"^job {two.id} is cancelled, not queued or running$"):
        await queue.cancel(two.id, "alice")


async def test_an_id_wins_over_a_name(queue: JobQueue) -> None:
    target = await add(queue, "train")
    named = await add(queue, target.id)  # a job whose *name* is the other's ID
    assert await queue.cancel(target.id, None) == 1
    assert (await queue.get(named.id)) == named


async def test_cancel_by_id_outside_the_scope(queue: JobQueue) -> None:
    bobs = await add(queue, "train", user="bob")
    with pytest.raises(PermissionDenied, match=r"^You can only cancel your own jobs$"):
        await queue.cancel(bobs.id, "alice")
    running = await claimed(queue)
    assert await queue.cancel(running.id, None) == 1  # scope all; running jobs too
    with pytest.raises(JobNotFound):  # finished: not found, whoever asks
        await queue.cancel(running.id, "alice")


# -- UPDATE_JOB's order of checks -------------------------------------------------------


async def test_update_checks_in_order(queue: JobQueue) -> None:
    job = await add(queue)
    await claimed(queue, "w1")
    await queue.cancel(job.id, None)

    async def update(**kw: Any) -> None:
        args = {"user": None, "caller": None, "worker_id": "w9", **kw}
        await queue.update(job.id, JobStatus.RUNNING, "", **args)

    with pytest.raises(JobNotFound):
        await queue.update("no-such-job", JobStatus.RUNNING, "", None, worker_id="w9")
    with pytest.raises(PermissionDenied, match="your own jobs"):
        await update(user="bob")
    with pytest.raises(PermissionDenied, match=r"^job claimed by another user$"):
        await update(caller="walt")
    with pytest.raises(JobCancelled) as info:  # before "job reassigned"
        await update()
    assert info.value.code is ErrorCode.JOB_CANCELLED


async def test_reassigned_comes_before_not_running(queue: JobQueue) -> None:
    job = await add(queue)
    await claimed(queue, "w1")
    await queue.update(job.id, JobStatus.COMPLETED, "", None, worker_id="w1")
    with pytest.raises(InvalidRequest, match=r"^job reassigned$"):
        await queue.update(job.id, JobStatus.RUNNING, "", None, worker_id="w2")
    with pytest.raises(InvalidRequest, match=r"is not running \(it is completed\)$"):
        await queue.update(job.id, JobStatus.RUNNING, "", None, worker_id="w1")
    with pytest.raises(InvalidRequest, match=r"is not running \(it is completed\)$"):
        await queue.update(job.id, JobStatus.RUNNING, "", None)  # an old client: no worker_id


def vars_of(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in jobs._FIELDS}


async def test_a_claim_finds_a_job_whose_lease_expired(queue: JobQueue, clock: Clock) -> None:
    """An idle claim is answered from one read; a lost lease must still be seen by it."""
    job = await add(queue, max_attempts=2)
    await claimed(queue, "w1")
    assert await queue.claim("w2") is None  # nothing queued, no lease lost yet
    clock.t += LEASE_S + 1
    again = await queue.claim("w2")
    assert again is not None and (again.id, again.attempts) == (job.id, 1)


async def test_a_claim_of_scope_own_sees_only_its_user_s_jobs(queue: JobQueue) -> None:
    await add(queue, user="bob")
    assert await queue.claim("w1", "alice") is None
    mine = await add(queue, user="alice")
    got = await queue.claim("w1", "alice")
    assert got is not None and got.id == mine.id
