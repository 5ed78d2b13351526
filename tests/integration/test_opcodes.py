"""Every opcode against a real daemon over a real websockets client.

Happy paths check exact response types and JSON shapes (PROTOCOL.md section 4);
the error half triggers every error code the daemon can produce, checks the
order of checks (section 3) and that an ERROR leaves the connection usable.
"""

import contextlib
import math
import re
import sqlite3
import struct
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from fetchml.protocol.enums import ErrorCode, JobStatus, Opcode, PruneType
from fetchml.protocol.metrics import (
    MetricRecord,
    MetricsPage,
    decode_records,
)
from fetchml.protocol.records import decode_metadata
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
    encode_request,
)
from fetchml.protocol.responses import Data, Error, StatusReport, decode_response
from fetchml.server.query import DEFAULT_LIMIT
from tests.support.experiments import by_byte, commit_id, write_experiment
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, UNKNOWN_KEY, hash_of
from tests.support.lttb import reference_lttb
from tests.support.wire import (
    MIN_BODY,
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

JOB_KEYS = {
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
}
EXPERIMENT_ROW_KEYS = {
    "commit_id",
    "timestamp",
    "job_name",
    "user",
    "metrics_count",
    "damaged",
    "run",
}
RECORD_KEYS = {"name", "value", "step", "timestamp"}


# -- helpers ---------------------------------------------------------------------


def raw(opcode: int, body: bytes = b"", key: bytes = ADMIN) -> bytes:
    """A request message built by hand: `[opcode][key hash][body]`."""
    return bytes([opcode]) + key + body


def str8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def body_of(req: Request) -> bytes:
    return encode_request(req)[17:]


def names_steps(records: Iterable[MetricRecord]) -> list[tuple[str, int]]:
    return [(r.name, r.step) for r in records]


async def still_open(client: RawClient) -> None:
    """The connection still serves requests."""
    data_of(await client.call(WhoAmI(key_hash=ADMIN)), "whoami")


async def query(client: RawClient, cid: bytes, **fields: Any) -> MetricsPage:
    return page_of(await client.call(QueryMetrics(key_hash=ADMIN, commit_id=cid, **fields)))


async def jobs_by_id(client: RawClient) -> dict[str, dict[str, Any]]:
    status = status_of(await client.call(Status(key_hash=ADMIN)))
    return {job["id"]: job for job in status["jobs"]}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The daemon's experiment tree (make_config puts it here)."""
    return tmp_path / "experiments"


# -- QUEUE_JOB, STATUS, CANCEL_JOB, CLAIM_JOB, UPDATE_JOB ---------------------------


async def test_queue_job_returns_the_job_and_creates_the_experiment(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = commit_id("queue")
    before = int(time.time())
    job = await queue(client, "alice", cid, "train-resnet", priority=7)
    after = int(time.time())

    assert set(job) == JOB_KEYS
    assert str(uuid.UUID(job["id"])) == job["id"]
    assert before <= job["created_at"] <= after
    assert job == {
        "id": job["id"],
        "job_name": "train-resnet",
        "args": "",
        "status": "queued",
        "priority": 7,
        "created_at": job["created_at"],
        "started_at": None,
        "ended_at": None,
        "worker_id": None,
        "claimed_by": None,
        "error": None,
        "datasets": [],
        "metadata": {"commit_id": cid.hex(), "user": "alice"},
        "spec": None,
        "attempts": 0,
        "heartbeat_at": None,
    }
    doc = data_of(
        await client.call(GetExperiment(key_hash=hash_of("alice"), commit_id=cid)), "experiment"
    )
    assert doc["metadata"]["job_name"] == "train-resnet"
    assert doc["metadata"]["user"] == "alice"
    assert before <= doc["metadata"]["timestamp"] <= after
    # A second job on the (now existing) experiment of the same user.
    again = await queue(client, "alice", cid, "train-resnet-2")
    assert again["id"] != job["id"]
    assert again["metadata"] == {"commit_id": cid.hex(), "user": "alice"}


async def test_status_lists_readable_jobs_newest_first(daemon: Daemon) -> None:
    client = await daemon.client()
    a1 = await queue(client, "alice", commit_id("a"), "first")
    a2 = await queue(client, "alice", commit_id("a"), "second")
    b1 = await queue(client, "bob", commit_id("b"), "bobs")

    alice = status_of(await client.call(Status(key_hash=hash_of("alice"))))
    assert alice == {
        "user": "alice",
        "role": "researcher",
        "jobs": [a2, a1],
        "queue_length": 3,
        "total": 2,
    }
    admin = status_of(await client.call(Status(key_hash=ADMIN)))
    assert admin == {
        "user": "admin",
        "role": "root",
        "jobs": [b1, a2, a1],
        "queue_length": 3,
        "total": 3,
    }


async def test_cancel_job_cancels_queued_and_running_jobs_by_name(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = commit_id("cancel")
    sweep = [await queue(client, "alice", cid, "sweep") for _ in range(2)]
    keep = await queue(client, "alice", cid, "keep")

    success_of(
        await client.call(CancelJob(key_hash=hash_of("alice"), job_name="sweep")),
        "cancelled 2 job(s)",
    )
    jobs = await jobs_by_id(client)
    for job in sweep:
        assert jobs[job["id"]]["status"] == "cancelled"
        assert isinstance(jobs[job["id"]]["ended_at"], int)
    assert jobs[keep["id"]]["status"] == "queued"
    assert status_of(await client.call(Status(key_hash=ADMIN)))["queue_length"] == 1

    error_of(
        await client.call(CancelJob(key_hash=hash_of("alice"), job_name="sweep")),
        ErrorCode.JOB_NOT_FOUND,
    )
    # A running job is cancelled too.
    claimed = data_of(await client.call(ClaimJob(key_hash=hash_of("wendy"), worker_id="w")), "job")
    assert claimed["id"] == keep["id"]
    success_of(
        await client.call(CancelJob(key_hash=hash_of("alice"), job_name="keep")),
        "cancelled 1 job(s)",
    )
    assert (await jobs_by_id(client))[keep["id"]]["status"] == "cancelled"


async def test_claim_job_takes_highest_priority_then_oldest(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = commit_id("claim")
    order = [("low-a", 5), ("high", 9), ("zero", 0), ("low-b", 5), ("lowest", 1), ("top", 255)]
    for name, priority in order:
        await queue(client, "alice", cid, name, priority)

    claimed = []
    for _ in range(len(order)):
        job = data_of(
            await client.call(ClaimJob(key_hash=hash_of("wendy"), worker_id="gpu-0")), "job"
        )
        assert set(job) == JOB_KEYS
        assert job["status"] == "running"
        assert job["worker_id"] == "gpu-0"
        assert isinstance(job["started_at"], int)
        assert job["ended_at"] is None
        claimed.append(job["job_name"])
    assert claimed == ["top", "high", "low-a", "low-b", "lowest", "zero"]

    empty = await client.call(ClaimJob(key_hash=hash_of("wendy"), worker_id="gpu-0"))
    assert data_of(empty, "job") is None
    assert status_of(await client.call(Status(key_hash=ADMIN)))["queue_length"] == 0


async def test_update_job_completes_and_fails_running_jobs(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = commit_id("update")
    ok = await queue(client, "alice", cid, "ok")
    bad = await queue(client, "alice", cid, "bad")
    waiting = await queue(client, "alice", cid, "waiting")
    wendy = hash_of("wendy")
    for _ in range(2):
        await client.call(ClaimJob(key_hash=wendy, worker_id="gpu-1"))

    running = UpdateJob(key_hash=wendy, job_id=ok["id"], status=JobStatus.RUNNING)
    success_of(await client.call(running))
    job = (await jobs_by_id(client))[ok["id"]]
    assert (job["status"], job["ended_at"]) == ("running", None)

    done = UpdateJob(key_hash=wendy, job_id=ok["id"], status=JobStatus.COMPLETED)
    success_of(await client.call(done))
    failed = UpdateJob(
        key_hash=wendy, job_id=bad["id"], status=JobStatus.FAILED, error="CUDA out of memory"
    )
    success_of(await client.call(failed))

    jobs = await jobs_by_id(client)
    assert jobs[ok["id"]]["status"] == "completed"
    assert jobs[ok["id"]]["error"] is None
    assert jobs[ok["id"]]["ended_at"] >= jobs[ok["id"]]["started_at"]
    assert jobs[bad["id"]]["status"] == "failed"
    assert jobs[bad["id"]]["error"] == "CUDA out of memory"
    assert jobs[bad["id"]]["ended_at"] >= jobs[bad["id"]]["started_at"]

    # Not running any more, or not yet: INVALID_REQUEST. Unknown id: JOB_NOT_FOUND.
    error_of(await client.call(done), ErrorCode.INVALID_REQUEST)
    queued = UpdateJob(key_hash=wendy, job_id=waiting["id"], status=JobStatus.COMPLETED)
    error_of(await client.call(queued), ErrorCode.INVALID_REQUEST)
    unknown = UpdateJob(key_hash=wendy, job_id=str(uuid.uuid4()), status=JobStatus.COMPLETED)
    error_of(await client.call(unknown), ErrorCode.JOB_NOT_FOUND)
    assert (await jobs_by_id(client))[waiting["id"]]["status"] == "queued"


# -- PRUNE ------------------------------------------------------------------------


async def test_prune_keeps_the_newest(start_daemon: DaemonFactory, base: Path) -> None:
    newest, tie_low, tie_high, oldest, broken = (by_byte(n) for n in (0x0A, 0x02, 0x03, 0x01, 0x04))
    write_experiment(base, newest, timestamp=1_700_000_300)
    write_experiment(base, tie_low, timestamp=1_700_000_200)
    write_experiment(base, tie_high, timestamp=1_700_000_200)
    write_experiment(base, oldest, timestamp=1_700_000_100)
    write_experiment(base, broken, timestamp=0, meta=b"\x01\x00")
    daemon = await start_daemon()
    client = await daemon.client()

    resp = await client.call(Prune(key_hash=ADMIN, prune_type=PruneType.KEEP_NEWEST, value=2))
    assert data_of(resp, "pruned") == {"pruned": sorted([tie_high.hex(), oldest.hex()])}
    assert not (base / oldest.hex()).exists()
    assert not (base / tie_high.hex()).exists()
    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert [row["commit_id"] for row in listed] == [newest.hex(), tie_low.hex(), broken.hex()]

    again = await client.call(Prune(key_hash=ADMIN, prune_type=PruneType.KEEP_NEWEST, value=5))
    assert data_of(again, "pruned") == {"pruned": []}


async def test_prune_older_than_days(start_daemon: DaemonFactory, base: Path) -> None:
    now = int(time.time())
    old, middle, recent, broken = (commit_id(x) for x in ("old", "middle", "recent", "broken"))
    write_experiment(base, old, timestamp=now - 10 * 86400)
    write_experiment(base, middle, timestamp=now - 3 * 86400)
    write_experiment(base, recent, timestamp=now - 60)
    write_experiment(base, broken, timestamp=0, meta=b"garbage")
    daemon = await start_daemon()
    client = await daemon.client()
    job = await queue(client, "admin", old, "on-old")

    older = PruneType.OLDER_THAN_DAYS
    resp = await client.call(Prune(key_hash=ADMIN, prune_type=older, value=5))
    assert data_of(resp, "pruned") == {"pruned": [old.hex()]}
    resp = await client.call(Prune(key_hash=ADMIN, prune_type=older, value=2))
    assert data_of(resp, "pruned") == {"pruned": [middle.hex()]}
    resp = await client.call(Prune(key_hash=ADMIN, prune_type=older, value=1))
    assert data_of(resp, "pruned") == {"pruned": []}
    assert (base / broken.hex()).is_dir()
    assert (base / recent.hex()).is_dir()
    # Jobs of pruned experiments stay in the queue's history.
    assert (await jobs_by_id(client))[job["id"]]["status"] == "queued"


# -- experiments and metrics -----------------------------------------------------------


async def test_create_experiment_writes_meta_and_files(daemon: Daemon, base: Path) -> None:
    client = await daemon.client()
    cid = commit_id("create")
    before = int(time.time())
    req = CreateExperiment(key_hash=hash_of("alice"), commit_id=cid, job_name="mnist")
    success_of(await client.call(req))
    assert (base / cid.hex() / "files").is_dir()
    meta = decode_metadata((base / cid.hex() / "meta.bin").read_bytes())
    assert (meta.commit_id, meta.job_name, meta.user) == (cid.hex(), "mnist", "alice")
    doc = data_of(
        await client.call(GetExperiment(key_hash=hash_of("alice"), commit_id=cid)), "experiment"
    )
    assert doc == {
        "metadata": {
            "commit_id": cid.hex(),
            "timestamp": doc["metadata"]["timestamp"],
            "job_name": "mnist",
            "user": "alice",
        },
        "metrics": [],
        "metrics_count": 0,
        "metrics_truncated": False,
        "run": None,
    }
    assert doc["metadata"]["timestamp"] >= before
    error_of(await client.call(req), ErrorCode.RESOURCE_ALREADY_EXISTS)
    error_of(
        await client.call(CreateExperiment(key_hash=ADMIN, commit_id=cid, job_name="other")),
        ErrorCode.RESOURCE_ALREADY_EXISTS,
    )


async def test_log_metric_and_log_metrics_then_get_experiment(daemon: Daemon, base: Path) -> None:
    client = await daemon.client()
    cid = await create(client, "log", job="mnist")
    before = int(time.time())
    single = LogMetric(key_hash=ADMIN, commit_id=cid, step=0, value=2.5, name="loss")
    success_of(await client.call(single), "")
    await log(client, cid, [(1, 2.0, "loss"), (1, 0.25, "acc"), (2, 1.5, "loss")])
    after = int(time.time())

    doc = data_of(await client.call(GetExperiment(key_hash=ADMIN, commit_id=cid)), "experiment")
    assert set(doc) == {"metadata", "metrics", "metrics_count", "metrics_truncated", "run"}
    assert doc["metadata"] == {
        "commit_id": cid.hex(),
        "timestamp": doc["metadata"]["timestamp"],
        "job_name": "mnist",
        "user": "admin",
    }
    assert doc["metrics_count"] == 4
    assert doc["metrics_truncated"] is False
    assert all(set(m) == RECORD_KEYS for m in doc["metrics"])
    assert all(before <= m["timestamp"] <= after for m in doc["metrics"])
    assert [(m["name"], m["step"], m["value"]) for m in doc["metrics"]] == [
        ("loss", 0, 2.5),
        ("loss", 1, 2.0),
        ("acc", 1, 0.25),
        ("loss", 2, 1.5),
    ]
    # Acknowledged means written: metrics.bin holds exactly these records.
    on_disk = decode_records((base / cid.hex() / "metrics.bin").read_bytes())
    assert [(r.name, r.step, r.value, r.timestamp) for r in on_disk] == [
        (m["name"], m["step"], m["value"], m["timestamp"]) for m in doc["metrics"]
    ]


async def test_metric_names_up_to_255_bytes_of_utf8(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await create(client, "names")
    longest = "é" * 127 + "x"  # 255 bytes
    await log(client, cid, [(0, 1.0, longest), (1, 2.0, "ü"), (2, 3.0, "a b/c:d")])
    page = await query(client, cid, name=longest)
    assert [(r.name, r.step) for r in page.records] == [(longest, 0)]
    doc = data_of(await client.call(GetExperiment(key_hash=ADMIN, commit_id=cid)), "experiment")
    assert [m["name"] for m in doc["metrics"]] == [longest, "ü", "a b/c:d"]


async def test_non_finite_values_are_json_strings(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await create(client, "nonfinite")
    values = [math.nan, math.inf, -math.inf, 1.5]
    await log(client, cid, [(i, v, "x") for i, v in enumerate(values)])

    resp = await client.call(GetExperiment(key_hash=ADMIN, commit_id=cid))
    doc = data_of(resp, "experiment")
    assert [m["value"] for m in doc["metrics"]] == ["NaN", "Infinity", "-Infinity", 1.5]
    assert isinstance(resp, Data)
    assert b'"NaN"' in resp.payload and b'"-Infinity"' in resp.payload
    # The binary pages carry the IEEE bits unchanged.
    page = await query(client, cid)
    assert math.isnan(page.records[0].value)
    assert [r.value for r in page.records[1:]] == [math.inf, -math.inf, 1.5]


async def test_list_experiments_newest_first(start_daemon: DaemonFactory, base: Path) -> None:
    late, tie_a, tie_b, early = (by_byte(n) for n in (0x01, 0x05, 0x06, 0x09))
    write_experiment(base, early, timestamp=1_700_000_000, user="bob", job_name="e")
    write_experiment(
        base, tie_b, timestamp=1_700_000_500, records=[(1_700_000_600, 0, 1.0, "loss")] * 3
    )
    write_experiment(base, tie_a, timestamp=1_700_000_500, job_name="")
    write_experiment(base, late, timestamp=1_700_000_900)
    daemon = await start_daemon()
    client = await daemon.client()

    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert all(set(row) == EXPERIMENT_ROW_KEYS for row in listed)

    def row(cid: bytes, timestamp: int, job: str, user: str, count: int) -> dict[str, Any]:
        keys = ("commit_id", "timestamp", "job_name", "user", "metrics_count", "damaged", "run")
        return dict(zip(keys, (cid.hex(), timestamp, job, user, count, None, None), strict=True))

    assert listed == [
        row(late, 1_700_000_900, "seeded", "alice", 0),
        row(tie_a, 1_700_000_500, "", "alice", 0),
        row(tie_b, 1_700_000_500, "seeded", "alice", 3),
        row(early, 1_700_000_000, "e", "bob", 0),
    ]


async def test_whoami(daemon: Daemon) -> None:
    client = await daemon.client()
    assert data_of(await client.call(WhoAmI(key_hash=ADMIN)), "whoami") == {
        "user": "admin",
        "role": "root",
        "permissions": ["*"],
        "scope": "all",
        "read_scope": "all",
        "write_scope": "all",
        "limits": {"lease_s": 120, "crash_after_s": 300, "max_message_bytes": 1048576},
    }


# -- QUERY_METRICS --------------------------------------------------------------------


async def ten_steps(client: RawClient) -> bytes:
    """20 records: index 2s is loss at step s, index 2s+1 is acc at step s."""
    cid = await create(client, "query")
    points = []
    for step in range(10):
        points += [(step, 1.0 / (step + 1), "loss"), (step, step / 10, "acc")]
    await log(client, cid, points)
    return cid


def at(*indices: int) -> list[tuple[str, int]]:
    """(name, step) of the records of ten_steps() at these indices."""
    return [("loss" if i % 2 == 0 else "acc", i // 2) for i in indices]


async def test_query_metrics_filters_by_name_and_step(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await ten_steps(client)

    everything = await query(client, cid)
    assert everything.next == 0
    assert names_steps(everything.records) == at(*range(20))
    assert everything.records[2].value == 0.5

    acc = await query(client, cid, name="acc")
    assert (acc.next, names_steps(acc.records)) == (0, at(*range(1, 20, 2)))
    steps = await query(client, cid, step_from=3, step_to=5)
    assert (steps.next, names_steps(steps.records)) == (0, at(*range(6, 12)))
    both = await query(client, cid, name="acc", step_from=3, step_to=5)
    assert (both.next, names_steps(both.records)) == (0, at(7, 9, 11))
    one = await query(client, cid, step_from=9, step_to=9)
    assert names_steps(one.records) == at(18, 19)
    none = await query(client, cid, name="missing")
    assert (none.next, none.records) == (0, [])


@pytest.mark.parametrize(
    ("fields", "indices", "next_index"),
    [
        ({"limit": 6}, range(0, 6), 6),
        ({"after": 6, "limit": 6}, range(6, 12), 12),
        ({"after": 14, "limit": 6}, range(14, 20), 0),
        ({"after": 18, "limit": 6}, range(18, 20), 0),
        ({"after": 19}, [19], 0),
        ({"after": 20}, [], 0),
        ({"after": 1000, "limit": 3}, [], 0),
        ({"name": "acc", "limit": 3}, [1, 3, 5], 6),
        ({"name": "acc", "after": 6, "limit": 3}, [7, 9, 11], 12),
        ({"name": "acc", "after": 18, "limit": 3}, [19], 0),
        ({"name": "acc", "after": 15, "limit": 3}, [15, 17, 19], 0),
        ({"name": "loss", "after": 10, "limit": 5}, [10, 12, 14, 16, 18], 19),
        ({"name": "loss", "after": 19, "limit": 5}, [], 0),
        ({"step_from": 2, "step_to": 3, "limit": 3}, [4, 5, 6], 7),
        ({"step_from": 2, "step_to": 3, "after": 7, "limit": 3}, [7], 0),
    ],
)
async def test_query_metrics_paging(
    daemon: Daemon, fields: dict[str, Any], indices: Iterable[int], next_index: int
) -> None:
    """`next` is the index after the last record examined when records remain, else 0."""
    client = await daemon.client()
    cid = await ten_steps(client)
    page = await query(client, cid, **fields)
    assert names_steps(page.records) == at(*indices)
    assert page.next == next_index


async def test_query_metrics_limit_zero_is_the_server_default(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"max_message_bytes": 4 << 20})  # the limit binds first
    client = await daemon.client()
    cid = await create(client, "default-limit")
    total = DEFAULT_LIMIT + 5
    for first in range(0, total, 50_000):
        await log(
            client, cid, [(i, float(i), "x") for i in range(first, min(first + 50_000, total))]
        )

    page = await query(client, cid, limit=0)
    assert len(page.records) == DEFAULT_LIMIT
    assert [r.step for r in page.records] == list(range(DEFAULT_LIMIT))
    assert page.next == DEFAULT_LIMIT
    rest = await query(client, cid, after=page.next)
    assert [r.step for r in rest.records] == list(range(DEFAULT_LIMIT, total))
    assert rest.next == 0


async def test_query_page_stops_before_max_message_bytes(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"max_message_bytes": 131072})  # the lowest allowed
    client = await daemon.client()
    cid = await create(client, "budget")
    for half in range(2):
        await log(client, cid, [(half * 4000 + i, float(i), "loss") for i in range(4000)])

    steps: list[int] = []
    after = 0
    while True:
        await client.send(QueryMetrics(key_hash=ADMIN, commit_id=cid, after=after))
        packet = await client.ws.recv()
        assert isinstance(packet, bytes)
        assert len(packet) <= 131072
        page = page_of(decode_response(packet))
        assert page.records, "a page holds at least one record"
        steps += [r.step for r in page.records]
        if page.next == 0:
            break
        assert page.next == after + len(page.records)
        after = page.next
    assert after > 0, "8,000 records do not fit in one 131,072-byte page"
    assert steps == list(range(8000))


async def test_query_metrics_max_points_downsamples_per_name(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await create(client, "lttb")
    loss = [(s * 3, math.sin(s / 7) + (s % 5) * 0.1) for s in range(100)]
    acc = [(s * 2, math.cos(s / 3) * s) for s in range(50)]
    lr = [(s, 0.1 / (s + 1)) for s in range(3)]
    points = []
    for i in range(100):
        points.append((*loss[i], "loss"))
        if i < 50:
            points.append((*acc[i], "acc"))
    points += [(*p, "lr") for p in lr]
    await log(client, cid, points)

    # after/limit are ignored with max_points.
    page = await query(client, cid, max_points=10, after=5, limit=1)
    assert page.next == 0
    names = [r.name for r in page.records]
    assert names == ["loss"] * 10 + ["acc"] * 10 + ["lr"] * 3
    for name, series in (("loss", loss), ("acc", acc), ("lr", lr)):
        got = [(r.step, r.value) for r in page.records if r.name == name]
        assert got == [series[i] for i in reference_lttb(series, 10)]
        assert got[0] == series[0] and got[-1] == series[-1]

    first = await query(client, cid, max_points=1)
    assert [(r.name, r.step) for r in first.records] == [("loss", 0), ("acc", 0), ("lr", 0)]
    ends = await query(client, cid, max_points=2)
    assert [(r.name, r.step) for r in ends.records] == [
        ("loss", 0),
        ("loss", 297),
        ("acc", 0),
        ("acc", 98),
        ("lr", 0),
        ("lr", 2),
    ]
    assert first.next == ends.next == 0

    # Filters first, then per-name sampling over the matching records.
    window = await query(client, cid, name="loss", step_from=30, step_to=57, max_points=4)
    matching = [p for p in loss if 30 <= p[0] <= 57]
    assert [(r.step, r.value) for r in window.records] == [
        matching[i] for i in reference_lttb(matching, 4)
    ]
    assert (window.records[0].step, window.records[-1].step) == (30, 57)
    assert window.next == 0


async def test_query_metrics_max_points_keeps_a_spike(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await create(client, "spike")
    await log(client, cid, [(s, 100.0 if s == 37 else 0.0, "y") for s in range(80)])
    page = await query(client, cid, max_points=3)
    assert [(r.step, r.value) for r in page.records] == [(0, 0.0), (37, 100.0), (79, 0.0)]


# -- GET_EXPERIMENT truncation -----------------------------------------------------------


async def test_get_experiment_truncates_to_the_newest_that_fit(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(server={"max_message_bytes": 131072})  # the lowest allowed
    client = await daemon.client()
    cid = await create(client, "big")
    await log(client, cid, [(s, s * 0.5, "loss") for s in range(4000)])

    await client.send(GetExperiment(key_hash=ADMIN, commit_id=cid))
    packet = await client.ws.recv()
    assert isinstance(packet, bytes)
    assert 65536 < len(packet) <= 131072
    doc = data_of(decode_response(packet), "experiment")
    assert doc["metrics_count"] == 4000
    assert doc["metrics_truncated"] is True
    steps = [m["step"] for m in doc["metrics"]]
    assert 0 < len(steps) < 4000
    assert steps == list(range(4000 - len(steps), 4000))
    assert doc["metadata"]["commit_id"] == cid.hex()


async def test_get_experiment_small_enough_is_not_truncated(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"max_message_bytes": 131072})  # the lowest allowed
    client = await daemon.client()
    cid = await create(client, "small")
    await log(client, cid, [(s, 1.0, "loss") for s in range(600)])
    doc = data_of(await client.call(GetExperiment(key_hash=ADMIN, commit_id=cid)), "experiment")
    assert (doc["metrics_count"], doc["metrics_truncated"]) == (600, False)
    assert [m["step"] for m in doc["metrics"]] == list(range(600))


# -- WATCH_METRICS ------------------------------------------------------------------------


async def collect(client: RawClient, until: int) -> list[MetricRecord]:
    """Records of pushed DATA `metrics` packets up to the one whose next is `until`."""
    records: list[MetricRecord] = []
    while True:
        page = page_of(await client.recv())
        records += page.records
        if page.next >= until:
            assert page.next == until
            return records


async def test_watch_metrics_backfills_then_pushes(daemon: Daemon) -> None:
    writer = await daemon.client()
    cid = await create(writer, "watch")
    await log(writer, cid, [(0, 1.0, "loss"), (0, 0.1, "acc"), (1, 0.9, "loss")])

    watcher = await daemon.client()
    req = WatchMetrics(key_hash=ADMIN, commit_id=cid, from_index=1, name="loss")
    success_of(await watcher.call(req), "")
    assert names_steps(await collect(watcher, 3)) == [("loss", 1)]

    await log(writer, cid, [(2, 0.2, "acc"), (2, 0.8, "loss")])
    pushed = await collect(watcher, 5)
    assert [(r.name, r.step, r.value) for r in pushed] == [("loss", 2, 0.8)]

    everything = await daemon.client()
    success_of(await everything.call(WatchMetrics(key_hash=ADMIN, commit_id=cid)), "")
    assert names_steps(await collect(everything, 5)) == [
        ("loss", 0),
        ("acc", 0),
        ("loss", 1),
        ("acc", 2),
        ("loss", 2),
    ]
    # Any message after an accepted WATCH closes the connection with 1008.
    await everything.send(WhoAmI(key_hash=ADMIN))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await everything.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


async def test_watch_metrics_from_past_the_end_waits(daemon: Daemon) -> None:
    writer = await daemon.client()
    cid = await create(writer, "watch-ahead")
    await log(writer, cid, [(0, 0.0, "x"), (1, 1.0, "x")])
    watcher = await daemon.client()
    success_of(await watcher.call(WatchMetrics(key_hash=ADMIN, commit_id=cid, from_index=5)), "")
    await log(writer, cid, [(2, 2.0, "x"), (3, 3.0, "x")])  # indices 2, 3: before from_index
    await log(writer, cid, [(4, 4.0, "x"), (5, 5.0, "x")])  # index 5 is the first wanted
    page = page_of(await watcher.recv())
    assert (page.next, [r.step for r in page.records]) == (6, [5])


# -- errors: INVALID_REQUEST at decode --------------------------------------------------------


@pytest.mark.parametrize("opcode", range(0x05, 0x0A))
async def test_reserved_opcodes_are_unsupported(daemon: Daemon, opcode: int) -> None:
    client = await daemon.client()
    resp = await client.call(raw(opcode))
    error_of(resp, ErrorCode.INVALID_REQUEST, f"unsupported opcode 0x{opcode:02x}")
    await still_open(client)


@pytest.mark.parametrize("opcode", [0x00, 0x19, 0x7F, 0xFF])
async def test_unknown_opcodes_are_invalid(daemon: Daemon, opcode: int) -> None:
    client = await daemon.client()
    error = error_of(await client.call(raw(opcode)), ErrorCode.INVALID_REQUEST)
    assert f"0x{opcode:02x}" in error.message
    await still_open(client)


@pytest.mark.parametrize("size", [0, 1, 16])
async def test_message_shorter_than_the_header(daemon: Daemon, size: int) -> None:
    client = await daemon.client()
    error_of(await client.call(raw(0x13, key=ADMIN)[:size]), ErrorCode.INVALID_REQUEST)
    await still_open(client)


def assert_names_lengths(error: Error, op: Opcode, minimum: int, actual: int) -> None:
    """The message names the opcode, the minimum body length and the actual one."""
    assert op.name in error.message, error.message
    numbers = re.findall(r"\d+", error.message.replace(f"0x{op:02x}", ""))
    assert str(minimum) in numbers, error.message
    assert str(actual) in numbers, error.message


@pytest.mark.parametrize(
    "op", [op for op, size in MIN_BODY.items() if size], ids=lambda op: op.name
)
async def test_short_body_names_the_lengths(daemon: Daemon, op: Opcode) -> None:
    client = await daemon.client()
    minimum = MIN_BODY[op]
    for actual in (0, minimum - 1):
        error = error_of(await client.call(raw(op, b"\0" * actual)), ErrorCode.INVALID_REQUEST)
        assert_names_lengths(error, op, minimum, actual)
    await still_open(client)


@pytest.mark.parametrize("op", list(Opcode), ids=lambda op: op.name)
async def test_trailing_bytes_name_the_lengths(daemon: Daemon, op: Opcode) -> None:
    client = await daemon.client()
    body = body_of(sample_request(op, ADMIN, commit_id("trailing"))) + b"\0\0"
    error = error_of(await client.call(raw(op, body)), ErrorCode.INVALID_REQUEST)
    assert_names_lengths(error, op, MIN_BODY[op], len(body))
    await still_open(client)


CID = commit_id("utf8")
ALL_STEPS = struct.pack(">IIIQI", 0, 0xFFFFFFFF, 0, 0, 0)
BAD_UTF8 = [
    (Opcode.QUEUE_JOB, CID + b"\x05" + str8(b"\xff")),
    (Opcode.CANCEL_JOB, str8(b"\xc3")),
    (Opcode.LOG_METRIC, CID + struct.pack(">Id", 0, 1.0) + str8(b"\xff")),
    (Opcode.LOG_METRICS, CID + struct.pack(">HId", 1, 0, 1.0) + str8(b"lo\xffss")),
    (Opcode.CREATE_EXPERIMENT, CID + str8(b"\xff\xfe")),
    (Opcode.QUERY_METRICS, CID + str8(b"\xe2\x82") + ALL_STEPS),
    (Opcode.WATCH_METRICS, CID + struct.pack(">Q", 0) + str8(b"\x80")),
    (Opcode.CLAIM_JOB, str8(b"gpu\xff")),
    (Opcode.UPDATE_JOB, str8(b"\xff") + b"\x02" + struct.pack(">H", 0)),
    (Opcode.UPDATE_JOB, str8(b"id") + b"\x03" + struct.pack(">H", 1) + b"\xff"),
]


@pytest.mark.parametrize(("op", "body"), BAD_UTF8, ids=lambda v: getattr(v, "name", ""))
async def test_invalid_utf8_is_invalid_request(daemon: Daemon, op: Opcode, body: bytes) -> None:
    client = await daemon.client()
    error = error_of(await client.call(raw(op, body)), ErrorCode.INVALID_REQUEST)
    assert_names_lengths(error, op, MIN_BODY[op], len(body))
    await still_open(client)


def log_metric_body(name: bytes) -> bytes:
    return CID + struct.pack(">Id", 0, 1.0) + str8(name)


def log_metrics_body(*names: bytes, count: int | None = None) -> bytes:
    points = b"".join(struct.pack(">Id", 0, 1.0) + str8(n) for n in names)
    return CID + struct.pack(">H", len(names) if count is None else count) + points


FIELD_RULES = {
    "empty metric name": (Opcode.LOG_METRIC, log_metric_body(b"")),
    "NUL in metric name": (Opcode.LOG_METRIC, log_metric_body(b"lo\0ss")),
    "empty name in a batch": (Opcode.LOG_METRICS, log_metrics_body(b"loss", b"")),
    "NUL name in a batch": (Opcode.LOG_METRICS, log_metrics_body(b"\0")),
    "LOG_METRICS count 0": (Opcode.LOG_METRICS, log_metrics_body()),
    "count above the records": (Opcode.LOG_METRICS, log_metrics_body(b"a", b"b", count=3)),
    "count below the records": (Opcode.LOG_METRICS, log_metrics_body(b"a", b"b", count=1)),
    "PRUNE keep 0": (Opcode.PRUNE, struct.pack(">BI", 0, 0)),
    "PRUNE older than 0": (Opcode.PRUNE, struct.pack(">BI", 1, 0)),
    "PRUNE type 2": (Opcode.PRUNE, struct.pack(">BI", 2, 5)),
    "PRUNE type 255": (Opcode.PRUNE, struct.pack(">BI", 255, 5)),
    "UPDATE_JOB status 0": (Opcode.UPDATE_JOB, str8(b"id") + b"\x00" + b"\0\0"),
    "UPDATE_JOB status 4": (Opcode.UPDATE_JOB, str8(b"id") + b"\x04" + b"\0\0"),
    "UPDATE_JOB status 9": (Opcode.UPDATE_JOB, str8(b"id") + b"\x09" + b"\0\0"),
}


@pytest.mark.parametrize(("op", "body"), FIELD_RULES.values(), ids=FIELD_RULES.keys())
async def test_field_rules_are_invalid_request(daemon: Daemon, op: Opcode, body: bytes) -> None:
    client = await daemon.client()
    error_of(await client.call(raw(op, body)), ErrorCode.INVALID_REQUEST)
    await still_open(client)
    # Nothing was applied: no experiment exists, and no metric was written.
    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert listed == []


async def test_queue_job_with_an_empty_job_name(daemon: Daemon) -> None:
    client = await daemon.client()
    req = QueueJob(key_hash=hash_of("alice"), commit_id=commit_id("q"), priority=5, job_name="")
    error_of(await client.call(req), ErrorCode.INVALID_REQUEST)
    assert status_of(await client.call(Status(key_hash=ADMIN)))["jobs"] == []


async def test_too_many_points(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"max_message_bytes": 131072})  # the lowest allowed
    client = await daemon.client()
    cid = await create(client, "points")
    for half in range(2):
        await log(client, cid, [(half * 4000 + i, float(i), "loss") for i in range(4000)])
    req = QueryMetrics(key_hash=ADMIN, commit_id=cid, max_points=8000)
    error_of(
        await client.call(req),
        ErrorCode.INVALID_REQUEST,
        "too many points: lower max_points or filter by name",
    )
    page = await query(client, cid, max_points=100)
    assert len(page.records) == 100
    assert (page.records[0].step, page.records[-1].step, page.next) == (0, 7999, 0)


# -- errors: authentication, permission, existence ---------------------------------------------


@pytest.mark.parametrize("op", list(Opcode), ids=lambda op: op.name)
async def test_unknown_key_is_authentication_failed(daemon: Daemon, op: Opcode) -> None:
    client = await daemon.client()
    req = sample_request(op, UNKNOWN_KEY, commit_id("auth"))
    error_of(await client.call(req), ErrorCode.AUTHENTICATION_FAILED, "Invalid API key")
    await still_open(client)


ORDER_OF_CHECKS = {
    "decode beats key: PRUNE value 0": (
        raw(Opcode.PRUNE, struct.pack(">BI", 0, 0), UNKNOWN_KEY),
        ErrorCode.INVALID_REQUEST,
    ),
    "decode beats key: short body": (
        raw(Opcode.LOG_METRIC, b"\0" * 10, UNKNOWN_KEY),
        ErrorCode.INVALID_REQUEST,
    ),
    "decode beats key: reserved opcode": (raw(0x07, b"", UNKNOWN_KEY), ErrorCode.INVALID_REQUEST),
    "decode beats key: bad status": (
        raw(Opcode.UPDATE_JOB, str8(b"id") + b"\x07\0\0", UNKNOWN_KEY),
        ErrorCode.INVALID_REQUEST,
    ),
    "key beats permission: PRUNE": (
        encode_request(Prune(key_hash=UNKNOWN_KEY, prune_type=PruneType.KEEP_NEWEST, value=1)),
        ErrorCode.AUTHENTICATION_FAILED,
    ),
    "permission beats not found: analyst LOG_METRIC": (
        encode_request(sample_request(Opcode.LOG_METRIC, hash_of("ana"), commit_id("none"))),
        ErrorCode.PERMISSION_DENIED,
    ),
    "permission beats not found: analyst LOG_METRICS": (
        encode_request(sample_request(Opcode.LOG_METRICS, hash_of("ana"), commit_id("none"))),
        ErrorCode.PERMISSION_DENIED,
    ),
    "permission beats job not found: analyst CANCEL_JOB": (
        encode_request(CancelJob(key_hash=hash_of("ana"), job_name="none")),
        ErrorCode.PERMISSION_DENIED,
    ),
    "permission beats job not found: researcher UPDATE_JOB": (
        encode_request(sample_request(Opcode.UPDATE_JOB, hash_of("alice"), b"")),
        ErrorCode.PERMISSION_DENIED,
    ),
    "not found beats scope: researcher GET_EXPERIMENT": (
        encode_request(GetExperiment(key_hash=hash_of("alice"), commit_id=commit_id("none"))),
        ErrorCode.RESOURCE_NOT_FOUND,
    ),
}


@pytest.mark.parametrize(("message", "code"), ORDER_OF_CHECKS.values(), ids=ORDER_OF_CHECKS.keys())
async def test_order_of_checks(daemon: Daemon, message: bytes, code: ErrorCode) -> None:
    client = await daemon.client()
    error = error_of(await client.call(message), code)
    if code == ErrorCode.PERMISSION_DENIED:
        assert error.message == "Insufficient permissions"
    await still_open(client)


async def test_permission_denied_and_cancel_scope(daemon: Daemon) -> None:
    client = await daemon.client()
    create_req = CreateExperiment(key_hash=hash_of("ana"), commit_id=commit_id("x"), job_name="x")
    error_of(await client.call(create_req), ErrorCode.PERMISSION_DENIED, "Insufficient permissions")

    bobs = await create(client, "bobs", user="bob")
    await queue(client, "bob", bobs, "bob-job")
    error_of(
        await client.call(GetExperiment(key_hash=hash_of("alice"), commit_id=bobs)),
        ErrorCode.PERMISSION_DENIED,
    )
    error_of(
        await client.call(CancelJob(key_hash=hash_of("alice"), job_name="bob-job")),
        ErrorCode.PERMISSION_DENIED,
        "You can only cancel your own jobs",
    )
    assert status_of(await client.call(Status(key_hash=ADMIN)))["queue_length"] == 1


@pytest.mark.parametrize(
    "op",
    [
        Opcode.LOG_METRIC,
        Opcode.LOG_METRICS,
        Opcode.GET_EXPERIMENT,
        Opcode.QUERY_METRICS,
        Opcode.WATCH_METRICS,
    ],
    ids=lambda op: op.name,
)
async def test_missing_experiment_is_resource_not_found(daemon: Daemon, op: Opcode) -> None:
    client = await daemon.client()
    req = sample_request(op, ADMIN, commit_id("missing"))
    error_of(await client.call(req), ErrorCode.RESOURCE_NOT_FOUND)
    # A refused WATCH leaves an ordinary connection; nothing was created.
    await still_open(client)
    assert data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments") == []


async def test_job_not_found(daemon: Daemon) -> None:
    client = await daemon.client()
    error_of(
        await client.call(CancelJob(key_hash=ADMIN, job_name="nothing")), ErrorCode.JOB_NOT_FOUND
    )
    update = UpdateJob(key_hash=hash_of("wendy"), job_id="nope", status=JobStatus.FAILED)
    error_of(await client.call(update), ErrorCode.JOB_NOT_FOUND)
    await still_open(client)


# -- errors: limits and storage -------------------------------------------------------------------


async def test_rate_limit_is_server_overloaded_for_control_requests_only(
    start_daemon: DaemonFactory, base: Path
) -> None:
    cid = commit_id("limited")
    write_experiment(base, cid, timestamp=1_700_000_000, user="alice")
    daemon = await start_daemon(rate_limit={"control_requests_per_minute": 5})
    client = await daemon.client()
    alice = hash_of("alice")

    for _ in range(6):  # pipelined: all six are read well within a refill period
        await client.send(Status(key_hash=alice))
    responses = [await client.recv() for _ in range(6)]
    assert all(isinstance(r, StatusReport) for r in responses[:5])
    error_of(responses[5], ErrorCode.SERVER_OVERLOADED)

    for step in range(20):
        single = LogMetric(key_hash=alice, commit_id=cid, step=step, value=1.0, name="loss")
        success_of(await client.call(single), "")
    await log(client, cid, [(20, 1.0, "loss"), (21, 1.0, "loss")], user="alice")
    error_of(await client.call(WhoAmI(key_hash=alice)), ErrorCode.SERVER_OVERLOADED)
    assert isinstance(await client.call(Status(key_hash=ADMIN)), StatusReport)

    # Heavy queries wait for a slot instead; claims and heartbeats are bounded by clients.
    heavy = [
        QueryMetrics(key_hash=alice, commit_id=cid, max_points=2),
        QueryMetrics(key_hash=alice, commit_id=cid, name="loss"),
        QueryMetrics(key_hash=alice, commit_id=cid, step_from=3, step_to=9),
        GetExperiment(key_hash=alice, commit_id=cid),
    ]
    for request in heavy:
        assert isinstance(await client.call(request), Data), request
    error_of(
        await client.call(QueryMetrics(key_hash=alice, commit_id=cid)), ErrorCode.SERVER_OVERLOADED
    )


async def test_claims_and_heartbeats_are_not_rate_limited(
    start_daemon: DaemonFactory, base: Path
) -> None:
    cid = commit_id("limited")
    write_experiment(base, cid, timestamp=1_700_000_000, user="alice")
    daemon = await start_daemon(rate_limit={"control_requests_per_minute": 1})
    worker = await daemon.client()
    wendy = hash_of("wendy")
    await worker.call(QueueJob(key_hash=ADMIN, commit_id=cid, priority=5, job_name="j"))
    assert isinstance(await worker.call(WhoAmI(key_hash=wendy)), Data)  # wendy's one request
    claim = data_of(await worker.call(ClaimJob(key_hash=wendy, worker_id="w")), "job")
    for _ in range(3):
        beat = UpdateJob(key_hash=wendy, job_id=claim["id"], status=JobStatus.RUNNING)
        assert not isinstance(await worker.call(beat), Error)
    assert data_of(await worker.call(ClaimJob(key_hash=wendy, worker_id="w")), "job") is None
    done = UpdateJob(key_hash=wendy, job_id=claim["id"], status=JobStatus.COMPLETED)
    error_of(await worker.call(done), ErrorCode.SERVER_OVERLOADED)


async def test_unreadable_metadata(start_daemon: DaemonFactory, base: Path) -> None:
    good, broken = by_byte(0x01), by_byte(0x02)
    write_experiment(base, good, timestamp=1_700_000_000, user="alice")
    write_experiment(base, broken, timestamp=0, meta=b"\x01\x00\x00")
    daemon = await start_daemon()
    client = await daemon.client()

    error_of(
        await client.call(GetExperiment(key_hash=ADMIN, commit_id=broken)),
        ErrorCode.STORAGE_ERROR,
        "metadata unreadable",
    )
    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert listed[-1] == {
        "commit_id": broken.hex(),
        "timestamp": None,
        "job_name": None,
        "user": None,
        "metrics_count": 0,
        "damaged": "metadata unreadable",
        "run": None,
    }
    assert [row["commit_id"] for row in listed] == [good.hex(), broken.hex()]
    alice_get = GetExperiment(key_hash=hash_of("alice"), commit_id=broken)
    error_of(await client.call(alice_get), ErrorCode.PERMISSION_DENIED)
    # Scope `all` can still append to it and query it.
    success_of(
        await client.call(
            LogMetric(key_hash=ADMIN, commit_id=broken, step=3, value=1.0, name="loss")
        )
    )
    assert names_steps((await query(client, broken)).records) == [("loss", 3)]


async def test_corrupt_metrics_file(start_daemon: DaemonFactory, base: Path) -> None:
    cid = commit_id("corrupt")
    records = [(1_700_000_000 + i, i, i / 2, "loss") for i in range(3)]
    path = write_experiment(base, cid, timestamp=1_700_000_000, user="alice", records=records)
    metrics = path / "metrics.bin"
    with metrics.open("ab") as f:
        f.write(b"\xff" * ((8 << 20) + 4096))
    size = metrics.stat().st_size
    daemon = await start_daemon()
    client = await daemon.client()

    single = LogMetric(key_hash=ADMIN, commit_id=cid, step=9, value=1.0, name="loss")
    error_of(await client.call(single), ErrorCode.STORAGE_ERROR, "metrics file corrupt")
    batch = LogMetrics(key_hash=ADMIN, commit_id=cid, metrics=(MetricPoint(9, 1.0, "loss"),))
    error_of(await client.call(batch), ErrorCode.STORAGE_ERROR, "metrics file corrupt")

    page = await query(client, cid)
    assert [(r.timestamp, r.step, r.value, r.name) for r in page.records] == records
    assert page.next == 0
    doc = data_of(await client.call(GetExperiment(key_hash=ADMIN, commit_id=cid)), "experiment")
    assert doc["metrics_count"] == 3
    assert metrics.stat().st_size == size


# -- the connection after errors ---------------------------------------------------------------------


async def test_errors_leave_the_connection_open_and_in_order(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await create(client, "pipelined")
    messages = [
        encode_request(LogMetric(key_hash=ADMIN, commit_id=cid, step=0, value=1.0, name="a")),
        raw(0x06),
        encode_request(Status(key_hash=UNKNOWN_KEY)),
        encode_request(LogMetric(key_hash=ADMIN, commit_id=cid, step=1, value=1.0, name="a")),
        encode_request(Prune(key_hash=hash_of("ana"), prune_type=PruneType.KEEP_NEWEST, value=1)),
        encode_request(GetExperiment(key_hash=ADMIN, commit_id=commit_id("gone"))),
        encode_request(sample_request(Opcode.LOG_METRICS, ADMIN, commit_id("gone"))),
        encode_request(sample_request(Opcode.LOG_METRICS, ADMIN, cid)),
        encode_request(WhoAmI(key_hash=hash_of("bob"))),
        encode_request(GetExperiment(key_hash=ADMIN, commit_id=cid)),
    ]
    for message in messages:  # pipelined: every answer comes back, in request order
        await client.send(message)
    responses = [await client.recv() for _ in messages]
    success_of(responses[0], "")
    error_of(responses[1], ErrorCode.INVALID_REQUEST, "unsupported opcode 0x06")
    error_of(responses[2], ErrorCode.AUTHENTICATION_FAILED, "Invalid API key")
    success_of(responses[3], "")
    error_of(responses[4], ErrorCode.PERMISSION_DENIED, "Insufficient permissions")
    error_of(responses[5], ErrorCode.RESOURCE_NOT_FOUND)
    error_of(responses[6], ErrorCode.RESOURCE_NOT_FOUND)
    success_of(responses[7], "1")
    assert data_of(responses[8], "whoami")["user"] == "bob"
    doc = data_of(responses[9], "experiment")
    assert [(m["name"], m["step"]) for m in doc["metrics"]] == [("a", 0), ("a", 1), ("loss", 1)]


async def test_database_fault_is_database_error(daemon: Daemon, tmp_path: Path) -> None:
    client = await daemon.client()
    await queue(client, "alice", commit_id("db"), "job")
    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.sqlite3")) as db:
        db.execute("DROP TABLE jobs")
    database_requests: list[Request] = [
        Status(key_hash=ADMIN),
        QueueJob(key_hash=ADMIN, commit_id=commit_id("db"), priority=1, job_name="x"),
        ClaimJob(key_hash=ADMIN, worker_id="w"),
    ]
    for req in database_requests:
        error = error_of(await client.call(req), ErrorCode.DATABASE_ERROR, "database error")
        assert error.details == ""
    await still_open(client)


async def test_internal_errors_are_unknown_error_without_details(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fault inside a handler, a coroutine or a metrics flush: only "internal error"."""
    secret = f"boom at {tmp_path}/jobs.sqlite3 key=fml_test_admin_key"
    client = await daemon.client()
    cid = await create(client, "faults")
    assert daemon.app.ctx is not None

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(secret)

    async def fail_async(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(secret)

    monkeypatch.setattr("fetchml.server.handlers.whoami", fail)
    monkeypatch.setattr(daemon.app.ctx.jobs, "list_jobs", fail_async)
    monkeypatch.setattr("fetchml.server.experiment.append", fail)
    faulty: list[Request] = [
        WhoAmI(key_hash=ADMIN),
        Status(key_hash=ADMIN),
        LogMetric(key_hash=ADMIN, commit_id=cid, step=0, value=1.0, name="loss"),
    ]
    for req in faulty:
        resp = await client.call(req)
        assert resp == Error(
            timestamp=resp.timestamp,
            code=ErrorCode.UNKNOWN_ERROR,
            message="internal error",
            details="",
        )
    # Still serving.
    data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
