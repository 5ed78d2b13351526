"""Jobs over a real daemon: STATUS holds the newest jobs that fit in max_message_bytes and
a `total`, UPDATE_JOB's error is cut to 4 KiB, and QUEUE_JOB on a full disk (a real tiny
tmpfs holding the jobs database and the experiments) is DISK_FULL, losing nothing."""

from pathlib import Path

import pytest

from fetchml.protocol.enums import ErrorCode, JobStatus
from fetchml.protocol.requests import ClaimJob, CreateExperiment, QueueJob, Status, UpdateJob
from fetchml.protocol.responses import StatusReport, encode_response
from fetchml.protocol.shapes import dumps
from tests.support import jobqueues
from tests.support.config import raw_config, write_config
from tests.support.daemon import daemons
from tests.support.experiments import commit_id
from tests.support.inproc import DaemonFactory
from tests.support.keys import hash_of
from tests.support.mounts import fill, mount_tmpfs, unmount
from tests.support.wire import RawClient, error_of, queue, status_of, success_of

start_daemon = jobqueues.start_daemon
job_redis = jobqueues.job_redis

MAX_MESSAGE = 131072
LONG_NAME = "n" * 255  # the longest job name: about 600 bytes of job JSON


async def test_status_returns_the_newest_jobs_that_fit_and_a_total(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(server={"max_message_bytes": MAX_MESSAGE})
    assert daemon.app.ctx is not None
    jobs = daemon.app.ctx.jobs
    cid = commit_id("many").hex()
    made = []
    for i in range(250):  # about 215 fit
        user = "bob" if i % 50 == 0 else "alice"
        made.append(await jobs.enqueue(job_name=LONG_NAME, commit_id=cid, user=user, priority=5))
    newest_first = [job.id for job in reversed(made)]
    client = await daemon.client()

    response = await client.call(Status(key_hash=hash_of("admin")))
    assert isinstance(response, StatusReport)
    size = len(encode_response(response))
    doc = status_of(response)
    shown = [job["id"] for job in doc["jobs"]]
    print(f"STATUS: {len(shown)} of {doc['total']} jobs in {size} bytes (max {MAX_MESSAGE})")
    assert (doc["total"], doc["queue_length"]) == (250, 250)
    assert 0 < len(shown) < 250
    assert shown == newest_first[: len(shown)]
    assert size <= MAX_MESSAGE
    following = await jobs.get(newest_first[len(shown)])
    assert following is not None
    assert size + len(dumps(following.to_json())) + 1 > MAX_MESSAGE - 512  # it holds as many as fit

    alice = status_of(await client.call(Status(key_hash=hash_of("alice"))))
    alices = [job.id for job in reversed(made) if job.user == "alice"]
    assert alice["total"] == 245
    assert [job["id"] for job in alice["jobs"]] == alices[: len(alice["jobs"])]
    bob = status_of(await client.call(Status(key_hash=hash_of("bob"))))
    assert (bob["total"], len(bob["jobs"])) == (5, 5)


async def test_update_job_keeps_the_first_4096_bytes_of_the_error(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon()
    client = await daemon.client()
    job = await queue(client, "alice", commit_id("err"), "train")
    wendy = hash_of("wendy")
    await client.call(ClaimJob(key_hash=wendy, worker_id="gpu-0"))
    error = "x" + "é" * 5000  # 10,001 bytes; byte 4,096 is the first half of an é
    update = UpdateJob(key_hash=wendy, job_id=job["id"], status=JobStatus.FAILED, error=error)
    success_of(await client.call(update))
    (shown,) = status_of(await client.call(Status(key_hash=hash_of("admin"))))["jobs"]
    assert shown["error"] == "x" + "é" * 2047
    assert len(shown["error"].encode()) == 4095


# -- a full disk ------------------------------------------------------------------------------


async def test_queue_job_on_a_full_disk_is_disk_full(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if not mount_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); see test_jobs.py")
    try:
        base = disk / "experiments"
        storage = {"base_path": str(base), "jobs_db": str(disk / "jobs.sqlite3")}
        with daemons(tmp_path) as start:
            config = write_config(tmp_path / "config.yaml", raw_config(tmp_path, storage=storage))
            daemon = await start(config).wait_ready()
            client = await daemon.client()
            await disk_full_scenario(client, disk, base)
            await client.ws.close()
            await daemon.shutdown()
    finally:
        unmount(disk)


async def disk_full_scenario(client: RawClient, disk: Path, base: Path) -> None:
    """QUEUE_JOB on an existing and on a new experiment: DISK_FULL, nothing half-made,
    reads go on; once there is space again, both succeed."""
    alice = hash_of("alice")
    cid, fresh = commit_id("full"), commit_id("fresh")
    success_of(await client.call(CreateExperiment(key_hash=alice, commit_id=cid, job_name="j")))
    first = await queue(client, "alice", cid, "first")

    filler = fill(disk)
    on_existing = QueueJob(key_hash=alice, commit_id=cid, priority=5, job_name="second")
    error_of(await client.call(on_existing), ErrorCode.DISK_FULL, "disk full")
    on_new = QueueJob(key_hash=alice, commit_id=fresh, priority=5, job_name="third")
    error_of(await client.call(on_new), ErrorCode.DISK_FULL, "disk full")
    assert sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) == [cid.hex()]
    status = status_of(await client.call(Status(key_hash=alice)))  # reads go on
    assert ([job["id"] for job in status["jobs"]], status["total"]) == ([first["id"]], 1)

    filler.unlink()
    second = await queue(client, "alice", cid, "second")
    third = await queue(client, "alice", fresh, "third")
    status = status_of(await client.call(Status(key_hash=alice)))
    ids = [job["id"] for job in status["jobs"]]
    assert (ids, status["total"]) == ([third["id"], second["id"], first["id"]], 3)
