"""Roles, permissions and scope (PROTOCOL.md section 3) over a real daemon."""

from pathlib import Path
from typing import Any

import pytest

from fetchml.protocol.enums import ErrorCode, JobStatus, Opcode, PruneType
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    LogMetric,
    LogMetrics,
    MetricPoint,
    Prune,
    QueryMetrics,
    QueueJob,
    Request,
    Status,
    UpdateJob,
    WatchMetrics,
    WhoAmI,
)
from fetchml.protocol.responses import Error, Response, StatusReport
from tests.support.config import custom_config, custom_hash, make_config
from tests.support.experiments import by_byte, commit_id, write_experiment
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, KEYS, hash_of, key_entry, key_hash
from tests.support.wire import (
    RawClient,
    create,
    data_of,
    error_of,
    log,
    page_of,
    queue,
    sample_request,
    status_of,
    success_of,
)

EVERY = frozenset(Opcode)
READ = frozenset(
    {
        Opcode.STATUS,
        Opcode.GET_EXPERIMENT,
        Opcode.LIST_EXPERIMENTS,
        Opcode.QUERY_METRICS,
        Opcode.WATCH_METRICS,
        Opcode.WHOAMI,
        Opcode.LIST_RUNS,
    }
)
UPDATE = frozenset(
    {
        Opcode.CANCEL_JOB,
        Opcode.LOG_METRIC,
        Opcode.LOG_METRICS,
        Opcode.LOG_METRICS_AT,
        Opcode.UPDATE_RUN,
    }
)
CREATE = frozenset({Opcode.QUEUE_JOB, Opcode.QUEUE_JOB_SPEC, Opcode.CREATE_EXPERIMENT})
CLAIM = frozenset({Opcode.CLAIM_JOB, Opcode.UPDATE_JOB})
ALLOWED = {
    "admin": EVERY,  # role "root": permissions ["*"], scope all
    "alice": READ | UPDATE | CREATE,  # researcher
    "ana": READ,  # analyst
    "wendy": READ | UPDATE | CLAIM,  # worker
}
"""user -> the opcodes its role may use; every other opcode is PERMISSION_DENIED."""


def assert_allowed(op: Opcode, resp: Response, user: str, cid: bytes) -> None:
    """The success response of each opcode, on the setup of test_role_table."""
    match op:
        case Opcode.QUEUE_JOB | Opcode.QUEUE_JOB_SPEC:
            job = data_of(resp, "job")
            assert job["metadata"] == {"commit_id": cid.hex(), "user": user}
            assert (job["spec"] is None) == (op is Opcode.QUEUE_JOB)
        case Opcode.STATUS:
            assert isinstance(resp, StatusReport)
            assert status_of(resp)["user"] == user
        case Opcode.CANCEL_JOB:
            success_of(resp, "cancelled 1 job(s)")
        case Opcode.PRUNE | Opcode.PRUNE_PREVIEW:
            assert data_of(resp, "pruned") == {"pruned": []}
        case Opcode.LOG_METRIC | Opcode.WATCH_METRICS:
            success_of(resp, "")
        case Opcode.LOG_METRICS | Opcode.LOG_METRICS_AT:
            success_of(resp, "1")
        case Opcode.UPDATE_RUN:
            assert data_of(resp, "run")["heartbeat_at"] is not None
        case Opcode.LIST_RUNS:
            page = data_of(resp, "runs")
            assert [row["metadata"]["user"] for row in page["runs"]] == [user]
        case Opcode.GET_EXPERIMENT:
            assert data_of(resp, "experiment")["metadata"]["user"] == user
        case Opcode.CREATE_EXPERIMENT | Opcode.UPDATE_JOB:
            success_of(resp)
        case Opcode.LIST_EXPERIMENTS:
            assert [row["user"] for row in data_of(resp, "experiments")] == [user]
        case Opcode.QUERY_METRICS:
            assert page_of(resp).records == []
        case Opcode.CLAIM_JOB:
            assert data_of(resp, "job")["status"] == "running"
        case Opcode.WHOAMI:
            assert data_of(resp, "whoami")["user"] == user
        case _:
            raise AssertionError(f"no success check for {op.name}")


@pytest.mark.parametrize("op", list(Opcode), ids=lambda op: op.name)
@pytest.mark.parametrize("user", list(ALLOWED))
async def test_role_table(
    start_daemon: DaemonFactory, tmp_path: Path, user: str, op: Opcode
) -> None:
    """Each role on its own experiment and job: allowed, or PERMISSION_DENIED."""
    mine = commit_id(f"{user}-experiment")
    write_experiment(tmp_path / "experiments", mine, timestamp=1_700_000_000, user=user)
    daemon = await start_daemon()
    assert daemon.app.ctx is not None
    jobs = daemon.app.ctx.jobs
    job = await jobs.enqueue(job_name="job", commit_id=mine.hex(), user=user, priority=5)
    if op == Opcode.UPDATE_JOB:
        assert await jobs.claim("gpu-0") is not None
    target = commit_id("fresh") if op == Opcode.CREATE_EXPERIMENT else mine
    client = await daemon.client()

    resp = await client.call(sample_request(op, hash_of(user), target, job.id))
    if op in ALLOWED[user]:
        assert_allowed(op, resp, user, target)
    else:
        error_of(resp, ErrorCode.PERMISSION_DENIED, "Insufficient permissions")
        # Nothing changed: the job is as it was, the experiment still there, no metrics.
        after = await jobs.get(job.id)
        assert after is not None
        expected = JobStatus.RUNNING if op == Opcode.UPDATE_JOB else JobStatus.QUEUED
        assert after.status == expected
        listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
        assert [(row["commit_id"], row["metrics_count"]) for row in listed] == [(mine.hex(), 0)]


@pytest.mark.parametrize(
    ("user", "whoami"),
    [
        ("admin", {"role": "root", "permissions": ["*"], "scope": "all"}),
        (
            "alice",
            {
                "role": "researcher",
                "permissions": ["jobs:create", "jobs:read", "jobs:update"],
                "scope": "own",
            },
        ),
        ("ana", {"role": "analyst", "permissions": ["jobs:read"], "scope": "all"}),
        (
            "wendy",
            {
                "role": "worker",
                "permissions": ["jobs:claim", "jobs:read", "jobs:update"],
                "scope": "all",
            },
        ),
    ],
)
async def test_whoami_per_role(daemon: Daemon, user: str, whoami: dict[str, Any]) -> None:
    client = await daemon.client()
    scope = whoami["scope"]
    assert data_of(await client.call(WhoAmI(key_hash=hash_of(user))), "whoami") == {
        "user": user,
        **whoami,
        "read_scope": scope,
        "write_scope": scope,
        "limits": {"lease_s": 120, "crash_after_s": 300, "max_message_bytes": 1048576},
    }


# -- scope own ----------------------------------------------------------------------


async def two_owners(client: RawClient) -> tuple[bytes, bytes]:
    """alice and bob each create an experiment with one metric and queue one job on it."""
    alices = await create(client, "alices", user="alice")
    bobs = await create(client, "bobs", user="bob")
    await log(client, alices, [(0, 1.0, "loss")], user="alice")
    await log(client, bobs, [(0, 2.0, "loss")], user="bob")
    await queue(client, "alice", alices, "alice-job")
    await queue(client, "bob", bobs, "bob-job")
    return alices, bobs


async def test_scope_own_cannot_touch_another_users_experiment(daemon: Daemon) -> None:
    client = await daemon.client()
    _, bobs = await two_owners(client)
    alice = hash_of("alice")
    denied: list[Request] = [
        GetExperiment(key_hash=alice, commit_id=bobs),
        LogMetric(key_hash=alice, commit_id=bobs, step=1, value=0.0, name="loss"),
        LogMetrics(key_hash=alice, commit_id=bobs, metrics=(MetricPoint(1, 0.0, "loss"),)),
        QueryMetrics(key_hash=alice, commit_id=bobs),
        WatchMetrics(key_hash=alice, commit_id=bobs),
        QueueJob(key_hash=alice, commit_id=bobs, priority=5, job_name="sneaky"),
    ]
    for req in denied:
        error_of(await client.call(req), ErrorCode.PERMISSION_DENIED)

    # Nothing reached bob's experiment or the queue; the connection is an ordinary one.
    page = page_of(await client.call(QueryMetrics(key_hash=hash_of("bob"), commit_id=bobs)))
    assert [(r.step, r.value) for r in page.records] == [(0, 2.0)]
    status = status_of(await client.call(Status(key_hash=ADMIN)))
    assert [job["job_name"] for job in status["jobs"]] == ["bob-job", "alice-job"]


async def test_scope_own_lists_only_own_items(daemon: Daemon) -> None:
    client = await daemon.client()
    alices, bobs = await two_owners(client)

    for user, cid in (("alice", alices), ("bob", bobs)):
        listed = data_of(await client.call(ListExperiments(key_hash=hash_of(user))), "experiments")
        assert [(row["commit_id"], row["user"]) for row in listed] == [(cid.hex(), user)]
        status = status_of(await client.call(Status(key_hash=hash_of(user))))
        assert [job["metadata"]["user"] for job in status["jobs"]] == [user]
        assert status["queue_length"] == 2  # every queued job, all users

    for user in ("admin", "ana", "wendy"):
        listed = data_of(await client.call(ListExperiments(key_hash=hash_of(user))), "experiments")
        assert {row["commit_id"] for row in listed} == {alices.hex(), bobs.hex()}
        assert len(status_of(await client.call(Status(key_hash=hash_of(user))))["jobs"]) == 2


async def test_cancel_only_own_jobs(daemon: Daemon) -> None:
    client = await daemon.client()
    alices, bobs = await two_owners(client)
    await queue(client, "alice", alices, "shared")
    await queue(client, "bob", bobs, "shared")

    error_of(
        await client.call(CancelJob(key_hash=hash_of("alice"), job_name="bob-job")),
        ErrorCode.PERMISSION_DENIED,
        "You can only cancel your own jobs",
    )
    cancel_shared = CancelJob(key_hash=hash_of("alice"), job_name="shared")
    success_of(await client.call(cancel_shared), "cancelled 1 job(s)")
    jobs = status_of(await client.call(Status(key_hash=ADMIN)))["jobs"]
    assert {(j["metadata"]["user"], j["status"]) for j in jobs if j["job_name"] == "shared"} == {
        ("alice", "cancelled"),
        ("bob", "queued"),
    }
    # Scope `all` with jobs:update cancels anyone's.
    success_of(
        await client.call(CancelJob(key_hash=hash_of("wendy"), job_name="shared")),
        "cancelled 1 job(s)",
    )
    success_of(
        await client.call(CancelJob(key_hash=ADMIN, job_name="bob-job")), "cancelled 1 job(s)"
    )


async def test_analyst_reads_everything_and_writes_nothing(daemon: Daemon) -> None:
    client = await daemon.client()
    alices, bobs = await two_owners(client)
    ana = hash_of("ana")
    for cid in (alices, bobs):
        doc = data_of(await client.call(GetExperiment(key_hash=ana, commit_id=cid)), "experiment")
        assert doc["metrics_count"] == 1
        assert (
            len(page_of(await client.call(QueryMetrics(key_hash=ana, commit_id=cid))).records) == 1
        )

    writes: list[Request] = [
        CreateExperiment(key_hash=ana, commit_id=commit_id("ana"), job_name="x"),
        QueueJob(key_hash=ana, commit_id=alices, priority=5, job_name="x"),
        LogMetric(key_hash=ana, commit_id=alices, step=1, value=1.0, name="loss"),
        LogMetrics(key_hash=ana, commit_id=bobs, metrics=(MetricPoint(1, 1.0, "loss"),)),
        CancelJob(key_hash=ana, job_name="alice-job"),
        Prune(key_hash=ana, prune_type=PruneType.KEEP_NEWEST, value=1),
        ClaimJob(key_hash=ana, worker_id="ana"),
        UpdateJob(key_hash=ana, job_id="x", status=JobStatus.FAILED),
    ]
    for req in writes:
        error_of(await client.call(req), ErrorCode.PERMISSION_DENIED, "Insufficient permissions")
    listed = data_of(await client.call(ListExperiments(key_hash=ana)), "experiments")
    assert sorted(row["metrics_count"] for row in listed) == [1, 1]
    assert status_of(await client.call(Status(key_hash=ana)))["queue_length"] == 2

    watcher = await daemon.client()
    success_of(await watcher.call(WatchMetrics(key_hash=ana, commit_id=bobs)), "")
    page = page_of(await watcher.recv())
    assert (page.next, [r.value for r in page.records]) == (1, [2.0])


async def test_worker_claims_updates_and_logs(daemon: Daemon) -> None:
    client = await daemon.client()
    alices, _ = await two_owners(client)
    wendy = hash_of("wendy")
    job = data_of(await client.call(ClaimJob(key_hash=wendy, worker_id="gpu-7")), "job")
    assert (job["job_name"], job["worker_id"], job["status"]) == ("alice-job", "gpu-7", "running")
    success_of(
        await client.call(
            LogMetric(key_hash=wendy, commit_id=alices, step=1, value=0.5, name="loss")
        ),
        "",
    )
    update = UpdateJob(key_hash=wendy, job_id=job["id"], status=JobStatus.COMPLETED)
    success_of(await client.call(update))

    alice_view = status_of(await client.call(Status(key_hash=hash_of("alice"))))["jobs"]
    assert [(j["id"], j["status"]) for j in alice_view] == [(job["id"], "completed")]
    doc = data_of(
        await client.call(GetExperiment(key_hash=hash_of("alice"), commit_id=alices)), "experiment"
    )
    assert doc["metrics_count"] == 2


async def test_unreadable_metadata_is_outside_every_own_scope(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    broken = by_byte(0x0B)
    write_experiment(tmp_path / "experiments", broken, timestamp=0, meta=b"\x09garbage!!")
    daemon = await start_daemon()
    client = await daemon.client()
    alice = hash_of("alice")
    for req in [
        GetExperiment(key_hash=alice, commit_id=broken),
        QueryMetrics(key_hash=alice, commit_id=broken),
        WatchMetrics(key_hash=alice, commit_id=broken),
        LogMetric(key_hash=alice, commit_id=broken, step=1, value=1.0, name="loss"),
        QueueJob(key_hash=alice, commit_id=broken, priority=1, job_name="x"),
    ]:
        error_of(await client.call(req), ErrorCode.PERMISSION_DENIED)
    assert data_of(await client.call(ListExperiments(key_hash=alice)), "experiments") == []
    for user in ("ana", "wendy", "admin"):
        listed = data_of(await client.call(ListExperiments(key_hash=hash_of(user))), "experiments")
        assert [(row["commit_id"], row["user"]) for row in listed] == [(broken.hex(), None)]


# -- custom roles from config ----------------------------------------------------------


@pytest.fixture
async def custom(start_daemon: DaemonFactory, tmp_path: Path) -> Daemon:
    base = tmp_path / "experiments"
    for n, user, timestamp in [
        (1, "pat", 1_700_000_100),
        (2, "pat", 1_700_000_200),
        (3, "alice", 1_600_000_000),
        (4, "alice", 1_600_000_001),
    ]:
        write_experiment(base, by_byte(n), timestamp=timestamp, user=user)
    daemon: Daemon = await start_daemon(custom_config(tmp_path))
    return daemon


@pytest.mark.parametrize(
    ("user", "role", "permissions", "scope"),
    [
        ("pat", "pruner", ["jobs:delete", "jobs:read"], "own"),
        ("olga", "observer", [], "own"),
        ("rita", "runner", ["jobs:claim", "jobs:read"], "own"),
    ],
)
async def test_custom_role_whoami(
    custom: Daemon, user: str, role: str, permissions: list[str], scope: str
) -> None:
    client = await custom.client()
    assert data_of(await client.call(WhoAmI(key_hash=custom_hash(user))), "whoami") == {
        "user": user,
        "role": role,
        "permissions": permissions,
        "scope": scope,
        "read_scope": scope,
        "write_scope": scope,
        "limits": {"lease_s": 120, "crash_after_s": 300, "max_message_bytes": 1048576},
    }


async def test_custom_role_prunes_only_own_experiments(custom: Daemon) -> None:
    client = await custom.client()
    pat = custom_hash("pat")
    resp = await client.call(Prune(key_hash=pat, prune_type=PruneType.KEEP_NEWEST, value=1))
    assert data_of(resp, "pruned") == {"pruned": [by_byte(1).hex()]}
    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert [row["commit_id"] for row in listed] == [by_byte(n).hex() for n in (2, 4, 3)]
    assert [
        row["user"]
        for row in data_of(await client.call(ListExperiments(key_hash=pat)), "experiments")
    ] == ["pat"]
    req = CreateExperiment(key_hash=pat, commit_id=commit_id("pat"), job_name="x")
    error_of(await client.call(req), ErrorCode.PERMISSION_DENIED, "Insufficient permissions")


async def test_custom_role_without_permissions(custom: Daemon) -> None:
    client = await custom.client()
    olga = custom_hash("olga")
    assert data_of(await client.call(WhoAmI(key_hash=olga)), "whoami")["user"] == "olga"
    for op in Opcode:
        if op != Opcode.WHOAMI:
            resp = await client.call(sample_request(op, olga, by_byte(3)))
            error_of(resp, ErrorCode.PERMISSION_DENIED, "Insufficient permissions")


async def test_custom_scope_own_worker_updates_only_own_jobs(custom: Daemon) -> None:
    client = await custom.client()
    alice_job = await queue(client, "alice", by_byte(3), "alice-job")
    assert (
        data_of(await client.call(ClaimJob(key_hash=ADMIN, worker_id="w")), "job")["id"]
        == (alice_job["id"])
    )
    update = UpdateJob(
        key_hash=custom_hash("rita"), job_id=alice_job["id"], status=JobStatus.FAILED
    )
    error_of(await client.call(update), ErrorCode.PERMISSION_DENIED)
    job = status_of(await client.call(Status(key_hash=ADMIN)))["jobs"][0]
    assert (job["id"], job["status"]) == (alice_job["id"], "running")


async def test_redefined_builtin_role(custom: Daemon) -> None:
    client = await custom.client()
    ana = hash_of("ana")
    assert data_of(await client.call(WhoAmI(key_hash=ana)), "whoami") == {
        "user": "ana",
        "role": "analyst",
        "permissions": ["jobs:create", "jobs:read"],
        "scope": "own",
        "read_scope": "own",
        "write_scope": "own",
        "limits": {"lease_s": 120, "crash_after_s": 300, "max_message_bytes": 1048576},
    }
    mine = await create(client, "anas", user="ana")
    listed = data_of(await client.call(ListExperiments(key_hash=ana)), "experiments")
    assert [(row["commit_id"], row["user"]) for row in listed] == [(mine.hex(), "ana")]
    resp: Response = await client.call(GetExperiment(key_hash=ana, commit_id=by_byte(3)))
    assert isinstance(resp, Error)
    assert resp.code == ErrorCode.PERMISSION_DENIED


# -- the claimer of a job ------------------------------------------------------------------


async def test_update_job_only_by_the_user_who_claimed_it_or_a_star_role(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """wendy and wes are both workers (scope all); a job wendy claimed is hers to report on,
    and an admin's (`*`)."""
    users = {**KEYS, "wes": ("worker", "fml_test_wes_key")}
    api_keys = {user: key_entry(key, role) for user, (role, key) in users.items()}
    roles = {"root": {"permissions": ["*"], "scope": "all"}}
    daemon = await start_daemon(make_config(tmp_path, auth={"api_keys": api_keys, "roles": roles}))
    client = await daemon.client()
    wendy, wes = hash_of("wendy"), key_hash("fml_test_wes_key")
    cid = commit_id("claimed")
    queued = await queue(client, "alice", cid, "train")
    assert queued["claimed_by"] is None
    job = data_of(await client.call(ClaimJob(key_hash=wendy, worker_id="gpu-1")), "job")
    assert (job["id"], job["claimed_by"], job["worker_id"]) == (queued["id"], "wendy", "gpu-1")

    def update(key: bytes, status: JobStatus, job_id: str = job["id"]) -> UpdateJob:
        return UpdateJob(key_hash=key, job_id=job_id, status=status, error="from elsewhere")

    denied = "job claimed by another user"
    error_of(await client.call(update(wes, JobStatus.FAILED)), ErrorCode.PERMISSION_DENIED, denied)
    error_of(
        await client.call(update(wes, JobStatus.RUNNING, "no-such-job")), ErrorCode.JOB_NOT_FOUND
    )
    (shown,) = status_of(await client.call(Status(key_hash=ADMIN)))["jobs"]
    assert (shown["status"], shown["error"], shown["claimed_by"]) == ("running", None, "wendy")

    success_of(await client.call(update(wendy, JobStatus.RUNNING)))  # her heartbeat
    success_of(await client.call(update(ADMIN, JobStatus.COMPLETED)))  # `*` may
    # On a finished job the claimer rule still comes before "not running".
    error_of(await client.call(update(wes, JobStatus.FAILED)), ErrorCode.PERMISSION_DENIED, denied)
    error_of(await client.call(update(wendy, JobStatus.FAILED)), ErrorCode.INVALID_REQUEST)
    (shown,) = status_of(await client.call(Status(key_hash=ADMIN)))["jobs"]
    assert (shown["status"], shown["claimed_by"]) == ("completed", "wendy")
