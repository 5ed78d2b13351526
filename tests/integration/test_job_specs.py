"""QUEUE_JOB_SPEC, leases, CANCEL_JOB by ID and UPDATE_JOB's worker_id against a real daemon:
every INVALID_REQUEST of a spec names its field, the order of checks, and what STATUS shows."""

import asyncio
import json
import time
from typing import Any

import pytest

from fetchml.protocol.enums import ErrorCode, JobStatus
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    GetExperiment,
    QueueJobSpec,
    Status,
    UpdateJob,
)
from tests.support import jobqueues
from tests.support.experiments import commit_id
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import hash_of
from tests.support.wire import (
    RawClient,
    create,
    data_of,
    error_of,
    queue,
    status_of,
    success_of,
)

start_daemon = jobqueues.start_daemon
job_redis = jobqueues.job_redis

SPEC = '{"command": ["python", "train.py", "--lr", "0.1"], "env": {"SEED": "1"}}'


def spec_request(
    spec: str, user: str = "alice", name: str = "train", label: str = "spec", priority: int = 5
) -> QueueJobSpec:
    return QueueJobSpec(
        key_hash=hash_of(user),
        commit_id=commit_id(label),
        priority=priority,
        job_name=name,
        spec=spec,
    )


async def jobs_of(client: RawClient, user: str = "admin") -> dict[str, Any]:
    status = status_of(await client.call(Status(key_hash=hash_of(user))))
    return {job["id"]: job for job in status["jobs"]}


async def test_queue_job_spec_returns_the_job_with_its_spec(daemon: Daemon) -> None:
    client = await daemon.client()
    job = data_of(await client.call(spec_request(SPEC)), "job")
    assert job["args"] == SPEC  # the text byte for byte
    assert job["spec"] == {
        "command": ["python", "train.py", "--lr", "0.1"],
        "env": {"SEED": "1"},
        "workdir": None,
        "max_attempts": 1,
        "timeout_s": 0,
    }
    assert (job["status"], job["attempts"], job["heartbeat_at"]) == ("queued", 0, None)
    assert job["metadata"] == {"commit_id": commit_id("spec").hex(), "user": "alice"}
    experiment = data_of(
        await client.call(GetExperiment(key_hash=hash_of("alice"), commit_id=commit_id("spec"))),
        "experiment",
    )
    assert experiment["metadata"]["job_name"] == "train"
    assert (await jobs_of(client, "alice"))[job["id"]] == job


BAD_SPECS = [
    ("", "spec: invalid JSON"),
    ("[]", "spec: expected a JSON object"),
    ("{}", "spec.command: required"),
    ('{"command": []}', "spec.command: must be 1..64 strings, the first non-empty"),
    ('{"command": [""]}', "spec.command: must be 1..64 strings, the first non-empty"),
    ('{"command": ["x", 1]}', "spec.command: must be 1..64 strings, the first non-empty"),
    ('{"command": "python train.py"}', "spec.command: must be 1..64 strings"),
    ('{"command": [' + ",".join(['"x"'] * 65) + "]}", "spec.command: must be 1..64 strings"),
    ('{"command": ["x\\u0000"]}', "spec.command: lone surrogate or U+0000 in a string"),
    ('{"command": ["x"], "env": []}', "spec.env: must be an object of strings"),
    ('{"command": ["x"], "env": {"A": 1}}', "spec.env.A: must be a string"),
    ('{"command": ["x"], "env": {"": "1"}}', "spec.env.: the name must be non-empty"),
    ('{"command": ["x"], "env": {"A=B": "1"}}', "spec.env.A=B: the name must be non-empty"),
    ('{"command": ["x"], "workdir": 7}', "spec.workdir: must be a string or null"),
    ('{"command": ["x"], "max_attempts": 0}', "spec.max_attempts: must be an integer 1..10"),
    ('{"command": ["x"], "max_attempts": 11}', "spec.max_attempts: must be an integer 1..10"),
    ('{"command": ["x"], "max_attempts": 2.0}', "spec.max_attempts: must be an integer 1..10"),
    ('{"command": ["x"], "max_attempts": true}', "spec.max_attempts: must be an integer 1..10"),
    ('{"command": ["x"], "timeout_s": -1}', "spec.timeout_s: must be an integer 0..2147483647"),
    ('{"command": ["x"], "timeout_s": 2147483648}', "spec.timeout_s: must be an integer"),
    ('{"command": ["x"], "timeout_s": NaN}', "spec.timeout_s: NaN is not JSON"),
    ('{"command": ["x"], "gpus": 2}', "spec.gpus: unknown key"),
    ('{"command": ["x"], "command": ["y"]}', "spec.command: duplicate key"),
    ('{"env": {"A": 1}}', "spec.env.A: must be a string"),  # document order: before `required`
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=[m for _, m in BAD_SPECS])
async def test_a_bad_spec_names_its_field_and_makes_nothing(
    daemon: Daemon, spec: str, message: str
) -> None:
    client = await daemon.client()
    error = error_of(await client.call(spec_request(spec)), ErrorCode.INVALID_REQUEST)
    assert error.message.startswith(message), error.message
    missing = await client.call(
        GetExperiment(key_hash=hash_of("alice"), commit_id=commit_id("spec"))
    )
    error_of(missing, ErrorCode.RESOURCE_NOT_FOUND)
    assert await jobs_of(client) == {}


async def test_order_of_checks(daemon: Daemon) -> None:
    client = await daemon.client()
    bad = "{}"
    error_of(await client.call(spec_request(bad, user="ana")), ErrorCode.PERMISSION_DENIED)
    empty_name = await client.call(spec_request(bad, name=""))
    error_of(empty_name, ErrorCode.INVALID_REQUEST, "job name must not be empty")
    bobs = await create(client, "bobs", user="bob")
    # the spec before the experiment's owner ...
    wrong = QueueJobSpec(
        key_hash=hash_of("alice"), commit_id=bobs, priority=5, job_name="t", spec=bad
    )
    error_of(await client.call(wrong), ErrorCode.INVALID_REQUEST, "spec.command: required")
    # ... and a good spec on another user's experiment is the scope's refusal
    good = QueueJobSpec(
        key_hash=hash_of("alice"), commit_id=bobs, priority=5, job_name="t", spec=SPEC
    )
    error_of(await client.call(good), ErrorCode.PERMISSION_DENIED)


async def test_cancel_by_id_over_the_wire(daemon: Daemon) -> None:
    client = await daemon.client()
    one = data_of(await client.call(spec_request(SPEC)), "job")
    two = data_of(await client.call(spec_request(SPEC)), "job")
    cancel = CancelJob(key_hash=hash_of("alice"), job_name=two["id"])
    success_of(await client.call(cancel), "cancelled 1 job(s)")
    jobs = await jobs_of(client)
    assert (jobs[one["id"]]["status"], jobs[two["id"]]["status"]) == ("queued", "cancelled")
    error_of(await client.call(cancel), ErrorCode.JOB_NOT_FOUND)
    by_bob = CancelJob(key_hash=hash_of("bob"), job_name=one["id"])
    error_of(
        await client.call(by_bob), ErrorCode.PERMISSION_DENIED, "You can only cancel your own jobs"
    )


async def test_heartbeats_reassignment_and_cancel(daemon: Daemon) -> None:
    client = await daemon.client()
    job = data_of(await client.call(spec_request(SPEC)), "job")
    wendy = hash_of("wendy")
    claimed = data_of(await client.call(ClaimJob(key_hash=wendy, worker_id="gpu-01")), "job")
    assert (claimed["id"], claimed["worker_id"], claimed["claimed_by"]) == (
        job["id"],
        "gpu-01",
        "wendy",
    )

    def beat(worker: str) -> UpdateJob:
        return UpdateJob(
            key_hash=wendy, job_id=job["id"], status=JobStatus.RUNNING, worker_id=worker
        )

    before = int(time.time())
    success_of(await client.call(beat("gpu-01")), f"job {job['id']} running")
    assert (await jobs_of(client))[job["id"]]["heartbeat_at"] >= before
    error_of(await client.call(beat("gpu-02")), ErrorCode.INVALID_REQUEST, "job reassigned")
    success_of(await client.call(CancelJob(key_hash=hash_of("alice"), job_name=job["id"])))
    error_of(
        await client.call(beat("gpu-01")),
        ErrorCode.JOB_CANCELLED,
        f"job {job['id']} was cancelled",
    )


async def test_a_lost_worker_s_job_is_requeued_after_the_lease(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(jobs={"lease_s": 1})
    client = await daemon.client()
    spec = json.dumps({"command": ["train"], "max_attempts": 2})
    job = data_of(await client.call(spec_request(spec)), "job")
    wendy = hash_of("wendy")
    data_of(await client.call(ClaimJob(key_hash=wendy, worker_id="gpu-01")), "job")
    waited = 0.0
    while (await jobs_of(client))[job["id"]]["status"] == "running":
        assert waited < 10, "the lease never expired"
        await asyncio.sleep(0.25)
        waited += 0.25
    print(f"requeued after {waited:.2f} s with lease_s 1")
    back = (await jobs_of(client))[job["id"]]
    assert (back["status"], back["attempts"], back["worker_id"], back["claimed_by"]) == (
        "queued",
        1,
        None,
        None,
    )
    assert (back["started_at"], back["heartbeat_at"]) == (None, None)
    again = data_of(await client.call(ClaimJob(key_hash=wendy, worker_id="gpu-02")), "job")
    assert (again["id"], again["attempts"]) == (job["id"], 1)
    while (await jobs_of(client))[job["id"]]["status"] == "running":
        await asyncio.sleep(0.25)
    final = (await jobs_of(client))[job["id"]]
    assert (final["status"], final["error"], final["attempts"]) == ("failed", "lease expired", 2)


async def test_a_job_queued_the_old_way_has_no_spec(daemon: Daemon) -> None:
    client = await daemon.client()
    job = await queue(client, "alice", commit_id("old"), "train")
    assert (job["spec"], job["args"], job["attempts"]) == (None, "", 0)
