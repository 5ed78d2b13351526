"""Read and write scopes over a real daemon: reads (GET_EXPERIMENT, LIST_EXPERIMENTS,
LIST_RUNS, QUERY_METRICS, WATCH_METRICS, STATUS) follow the read scope, everything else the
write scope; the built-in `member` (read all, write own), a config's own `member`, roles
that split their scopes the other way, and experiments whose meta.bin is unreadable."""

import time
from pathlib import Path
from typing import Any

from fetchml.protocol.enums import ErrorCode, PruneType
from fetchml.protocol.metrics import encode_record
from fetchml.protocol.requests import (
    CancelJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    ListRuns,
    LogMetric,
    LogMetrics,
    LogMetricsAt,
    MetricPoint,
    Prune,
    PrunePreview,
    QueryMetrics,
    QueueJob,
    Request,
    Status,
    UpdateRun,
    WatchMetrics,
    WhoAmI,
)
from tests.support.config import make_config
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
    query_all,
    queue,
    status_of,
    success_of,
)

USERS = {
    **KEYS,
    "mia": ("member", "fml_test_mia_key"),
    "cora": ("curator", "fml_test_cora_key"),
    "jan": ("janitor", "fml_test_jan_key"),
    "abe": ("appender", "fml_test_abe_key"),
}
"""KEYS, a built-in member, and users of roles that split their scopes."""
ROLES: dict[str, Any] = {
    "root": {"permissions": ["*"], "scope": "all"},
    # Reads everything, prunes only its own.
    "curator": {"permissions": ["jobs:read", "jobs:delete"], "read_scope": "all"},
    # Sees only its own, cancels and prunes everyone's.
    "janitor": {
        "permissions": ["jobs:read", "jobs:update", "jobs:delete"],
        "scope": "all",
        "read_scope": "own",
    },
    # Appends anywhere, reads only its own.
    "appender": {"permissions": ["jobs:read", "jobs:update"], "write_scope": "all"},
}
NOT_YOURS = "Access denied: not your experiment"


def who(user: str) -> bytes:
    return key_hash(USERS[user][1])


def at(cid: bytes, key: bytes, step: int = 0) -> LogMetricsAt:
    record = encode_record(int(time.time()) - 60, step, 0.5, b"loss")
    return LogMetricsAt(key_hash=key, commit_id=cid, count=1, records=record)


async def start(start_daemon: DaemonFactory, home: Path, roles: dict[str, Any] = ROLES) -> Daemon:
    api_keys = {user: key_entry(raw, role) for user, (role, raw) in USERS.items()}
    config = make_config(home, auth={"api_keys": api_keys, "roles": roles})
    daemon: Daemon = await start_daemon(config)
    return daemon


async def created(client: RawClient, label: str, key: bytes) -> bytes:
    cid = commit_id(label)
    success_of(await client.call(CreateExperiment(key_hash=key, commit_id=cid, job_name="")))
    return cid


async def alices_experiment(client: RawClient) -> bytes:
    """alice's experiment with one metric and one queued job `alice-job`."""
    cid = await create(client, "alices", user="alice", job="train")
    await log(client, cid, [(0, 1.0, "loss")], user="alice")
    await queue(client, "alice", cid, "alice-job")
    return cid


async def test_member_reads_everything_and_writes_only_its_own(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = await start(start_daemon, tmp_path)
    client = await daemon.client()
    alices = await alices_experiment(client)
    mia = who("mia")

    assert data_of(await client.call(WhoAmI(key_hash=mia)), "whoami") == {
        "user": "mia",
        "role": "member",
        "permissions": ["jobs:create", "jobs:read", "jobs:update"],
        "scope": "own",
        "read_scope": "all",
        "write_scope": "own",
        "limits": {"lease_s": 120, "crash_after_s": 300, "max_message_bytes": 1048576},
    }
    # Reads: alice's experiment, its metrics, a live watch, her jobs.
    doc = data_of(await client.call(GetExperiment(key_hash=mia, commit_id=alices)), "experiment")
    assert (doc["metadata"]["user"], doc["metrics_count"]) == ("alice", 1)
    listed = data_of(await client.call(ListExperiments(key_hash=mia)), "experiments")
    assert [row["user"] for row in listed] == ["alice"]
    assert [r.value for r in await query_all(client, alices, key=mia)] == [1.0]
    status = status_of(await client.call(Status(key_hash=mia)))
    assert [(j["job_name"], j["metadata"]["user"]) for j in status["jobs"]] == [
        ("alice-job", "alice")
    ]
    assert status["total"] == 1
    watcher = await daemon.client()
    success_of(await watcher.call(WatchMetrics(key_hash=mia, commit_id=alices)), "")
    assert [r.value for r in page_of(await watcher.recv()).records] == [1.0]

    # Writes to alice's: refused, nothing changes.
    denied: list[tuple[Request, str]] = [
        (LogMetric(key_hash=mia, commit_id=alices, step=1, value=9.0, name="loss"), NOT_YOURS),
        (
            LogMetrics(key_hash=mia, commit_id=alices, metrics=(MetricPoint(1, 9.0, "loss"),)),
            NOT_YOURS,
        ),
        (at(alices, mia), NOT_YOURS),
        (QueueJob(key_hash=mia, commit_id=alices, priority=5, job_name="mine"), NOT_YOURS),
        (CancelJob(key_hash=mia, job_name="alice-job"), "You can only cancel your own jobs"),
    ]
    for request, message in denied:
        error_of(await client.call(request), ErrorCode.PERMISSION_DENIED, message)
    assert [r.value for r in await query_all(client, alices)] == [1.0]
    jobs = status_of(await client.call(Status(key_hash=ADMIN)))["jobs"]
    assert [(j["job_name"], j["status"]) for j in jobs] == [("alice-job", "queued")]
    # The watcher saw none of it: the next push is alice's own next record.
    await log(client, alices, [(1, 2.0, "loss")], user="alice")
    assert [r.value for r in page_of(await watcher.recv()).records] == [2.0]

    # Its own: created, logged to, queued and cancelled like anyone's.
    mine = await created(client, "mias", mia)
    points = (MetricPoint(0, 3.0, "loss"),)
    success_of(await client.call(LogMetrics(key_hash=mia, commit_id=mine, metrics=points)), "1")
    success_of(await client.call(at(mine, mia, step=1)), "1")
    job = data_of(
        await client.call(QueueJob(key_hash=mia, commit_id=mine, priority=5, job_name="mia-job")),
        "job",
    )
    assert job["metadata"]["user"] == "mia"
    success_of(await client.call(CancelJob(key_hash=mia, job_name="mia-job")), "cancelled 1 job(s)")
    assert [r.step for r in await query_all(client, mine, key=mia)] == [0, 1]
    # alice (researcher: own and own) still sees only hers.
    alice_list = data_of(
        await client.call(ListExperiments(key_hash=hash_of("alice"))), "experiments"
    )
    assert [row["commit_id"] for row in alice_list] == [alices.hex()]


async def test_member_lists_runs_of_everyone_and_updates_only_its_own(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = await start(start_daemon, tmp_path)
    client = await daemon.client()
    alices = await alices_experiment(client)
    mia = who("mia")
    mine = await created(client, "mias", mia)
    page = data_of(await client.call(ListRuns(key_hash=mia)), "runs")
    assert page["total"] == 2
    assert {row["id"] for row in page["runs"]} == {alices.hex(), mine.hex()}
    alice_page = data_of(await client.call(ListRuns(key_hash=hash_of("alice"))), "runs")
    assert [row["id"] for row in alice_page["runs"]] == [alices.hex()]

    patch = '{"notes": "mine now"}'
    error_of(
        await client.call(UpdateRun(key_hash=mia, commit_id=alices, patch=patch)),
        ErrorCode.PERMISSION_DENIED,
        NOT_YOURS,
    )
    doc = data_of(await client.call(GetExperiment(key_hash=mia, commit_id=alices)), "experiment")
    assert doc["run"] is None
    run = data_of(await client.call(UpdateRun(key_hash=mia, commit_id=mine, patch=patch)), "run")
    assert run["notes"] == "mine now"


async def test_prune_considers_only_the_write_scope(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    base = tmp_path / "experiments"
    for n, user, timestamp in [
        (1, "alice", 1_700_000_100),
        (2, "alice", 1_700_000_200),
        (3, "cora", 1_700_000_000),
        (4, "cora", 1_700_000_300),
        (5, "jan", 1_700_000_050),
    ]:
        write_experiment(base, by_byte(n), timestamp=timestamp, user=user)
    daemon = await start(start_daemon, tmp_path)
    client = await daemon.client()
    keep = PruneType.KEEP_NEWEST

    # cora reads all five, and prunes among her own two.
    cora = who("cora")
    listed = data_of(await client.call(ListExperiments(key_hash=cora)), "experiments")
    assert len(listed) == 5
    preview = await client.call(PrunePreview(key_hash=cora, prune_type=keep, value=1))
    assert data_of(preview, "pruned") == {"pruned": [by_byte(3).hex()]}
    pruned = await client.call(Prune(key_hash=cora, prune_type=keep, value=1))
    assert data_of(pruned, "pruned") == {"pruned": [by_byte(3).hex()]}

    # jan sees only his own, and prunes among everyone's.
    jan = who("jan")
    listed = data_of(await client.call(ListExperiments(key_hash=jan)), "experiments")
    assert [row["commit_id"] for row in listed] == [by_byte(5).hex()]
    preview = await client.call(PrunePreview(key_hash=jan, prune_type=keep, value=1))
    assert data_of(preview, "pruned") == {"pruned": [by_byte(n).hex() for n in (1, 2, 5)]}
    left = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert len(left) == 4  # a preview removes nothing


async def test_jobs_follow_read_scope_for_status_and_write_scope_for_cancel(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = await start(start_daemon, tmp_path)
    client = await daemon.client()
    await alices_experiment(client)
    jan = who("jan")
    status = status_of(await client.call(Status(key_hash=jan)))
    assert (status["jobs"], status["total"], status["queue_length"]) == ([], 0, 1)
    success_of(
        await client.call(CancelJob(key_hash=jan, job_name="alice-job")), "cancelled 1 job(s)"
    )
    (job,) = status_of(await client.call(Status(key_hash=ADMIN)))["jobs"]
    assert job["status"] == "cancelled"


async def test_unreadable_metadata_read_scope_all_reads_write_scope_all_appends(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    broken = by_byte(0x0B)
    write_experiment(
        tmp_path / "experiments",
        broken,
        timestamp=0,
        meta=b"\x09garbage!!",
        records=[(1795735109, 0, 1.0, "loss")],
    )
    daemon = await start(start_daemon, tmp_path)
    client = await daemon.client()

    # member: read all, write own.
    mia = who("mia")
    listed = data_of(await client.call(ListExperiments(key_hash=mia)), "experiments")
    assert [(row["commit_id"], row["user"]) for row in listed] == [(broken.hex(), None)]
    assert [r.step for r in await query_all(client, broken, key=mia)] == [0]
    watcher = await daemon.client()
    success_of(await watcher.call(WatchMetrics(key_hash=mia, commit_id=broken)), "")
    assert [r.step for r in page_of(await watcher.recv()).records] == [0]
    appends: list[Request] = [
        LogMetric(key_hash=mia, commit_id=broken, step=1, value=1.0, name="loss"),
        at(broken, mia, step=1),
    ]
    for append in appends:
        error_of(await client.call(append), ErrorCode.PERMISSION_DENIED, NOT_YOURS)

    # appender: read own, write all.
    abe = who("abe")
    success_of(
        await client.call(LogMetric(key_hash=abe, commit_id=broken, step=1, value=1.0, name="x")),
        "",
    )
    success_of(await client.call(at(broken, abe, step=2)), "1")
    assert data_of(await client.call(ListExperiments(key_hash=abe)), "experiments") == []
    reads: list[Request] = [
        QueryMetrics(key_hash=abe, commit_id=broken),
        WatchMetrics(key_hash=abe, commit_id=broken),
        GetExperiment(key_hash=abe, commit_id=broken),
    ]
    for request in reads:
        error_of(await client.call(request), ErrorCode.PERMISSION_DENIED, NOT_YOURS)
    assert [r.step for r in await query_all(client, broken, key=mia)] == [0, 1, 2]
    # The watcher got the appends of the writer it may not see.
    steps: list[int] = []
    while len(steps) < 2:
        steps += [r.step for r in page_of(await watcher.recv()).records]
    assert steps == [1, 2]


async def test_a_configs_own_member_replaces_the_built_in(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    roles = {**ROLES, "member": {"permissions": ["jobs:read"]}}
    daemon = await start(start_daemon, tmp_path, roles)
    client = await daemon.client()
    alices = await alices_experiment(client)
    mia = who("mia")
    me = data_of(await client.call(WhoAmI(key_hash=mia)), "whoami")
    assert (me["role"], me["permissions"], me["read_scope"], me["write_scope"]) == (
        "member",
        ["jobs:read"],
        "own",
        "own",
    )
    error_of(
        await client.call(GetExperiment(key_hash=mia, commit_id=alices)),
        ErrorCode.PERMISSION_DENIED,
        NOT_YOURS,
    )
    assert data_of(await client.call(ListExperiments(key_hash=mia)), "experiments") == []
    error_of(
        await client.call(CreateExperiment(key_hash=mia, commit_id=commit_id("m"), job_name="")),
        ErrorCode.PERMISSION_DENIED,
        "Insufficient permissions",
    )
