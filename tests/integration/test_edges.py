"""Edges between features: prune against watchers and cached columns, a protocol
violation behind pipelined work, shutdown with a peer that stopped reading,
claims in scope own, and fsck --repair beside a running daemon."""

import asyncio
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from fetchml.protocol.enums import PruneType
from fetchml.protocol.requests import (
    ClaimJob,
    CreateExperiment,
    LogMetric,
    Prune,
    QueryMetrics,
    WatchMetrics,
    encode_request,
)
from fetchml.protocol.responses import Success
from fetchml.server.tools import fsck
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, hash_of
from tests.support.wire import create, data_of, log, page_of, queue, success_of


async def test_prune_ends_watches_and_forgets_cached_columns(daemon: Daemon) -> None:
    admin, alice, bob = [await daemon.client() for _ in range(3)]
    cid = b"\xff" * 20  # created in the same second as the other: the higher hex is pruned
    success_of(
        await alice.call(CreateExperiment(key_hash=hash_of("alice"), commit_id=cid, job_name="x"))
    )
    await log(alice, cid, [(i, 111.0, "loss") for i in range(3)], user="alice")
    query = QueryMetrics(key_hash=ADMIN, commit_id=cid, name="loss", max_points=10)
    assert [r.value for r in page_of(await admin.call(query)).records] == [111.0] * 3

    watcher = await daemon.client()
    success_of(await watcher.call(WatchMetrics(key_hash=hash_of("alice"), commit_id=cid)))
    assert len(page_of(await watcher.recv()).records) == 3  # the backfill

    prune = Prune(key_hash=ADMIN, prune_type=PruneType.KEEP_NEWEST, value=1)
    await admin.call(CreateExperiment(key_hash=ADMIN, commit_id=b"\0" * 20, job_name="kept"))
    pruned = data_of(await admin.call(prune), "pruned")["pruned"]
    assert cid.hex() in pruned
    with pytest.raises(ConnectionClosed) as closed:
        await watcher.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011

    # The same commit made anew by someone else holds only its own records.
    await queue(bob, "bob", cid, "again")
    await log(bob, cid, [(i, 222.0, "loss") for i in range(5)], user="bob")
    assert [r.value for r in page_of(await admin.call(query)).records] == [222.0] * 5


async def test_a_text_frame_closes_only_after_earlier_requests_are_answered(
    daemon: Daemon,
) -> None:
    client = await daemon.client()
    cid = await create(client, "text-after")
    n = 500
    for i in range(n):
        await client.send(LogMetric(key_hash=ADMIN, commit_id=cid, step=i, value=1.0, name="x"))
    await client.ws.send("not binary")
    acks = 0
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            assert isinstance(await client.recv(), Success)
            acks += 1
    assert acks == n
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003


async def test_shutdown_aborts_a_peer_that_stopped_reading(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"shutdown_timeout_s": 0.5})
    client = await daemon.client()
    cid = await create(client, "deaf")
    await log(client, cid, [(i, float(i), "loss") for i in range(20_000)])
    query = encode_request(QueryMetrics(key_hash=ADMIN, commit_id=cid))
    client.ws.transport.pause_reading()  # big answers pile up: the server's writer blocks
    for _ in range(200):
        await client.ws.send(query)
    (task,) = [t for t in asyncio.all_tasks() if "App.run" in repr(t.get_coro())]
    daemon.app.stop_requested.set()
    await asyncio.wait_for(asyncio.shield(task), 20)  # a hang detector, not a speed check
    client.ws.transport.abort()


async def test_claim_in_scope_own_takes_only_own_jobs(start_daemon: DaemonFactory) -> None:
    own_worker = {"permissions": ["jobs:read", "jobs:claim"], "scope": "own"}
    daemon = await start_daemon(auth={"roles": {"root": {"permissions": ["*"], "scope": "all"},
                                                 "researcher": own_worker}})  # fmt: skip
    client = await daemon.client()
    cid = await create(client, "claims")
    bob_job = await queue(client, "admin", cid, "admins-job", priority=9)
    claim = ClaimJob(key_hash=hash_of("alice"), worker_id="alice-gpu")
    assert data_of(await client.call(claim), "job") is None  # the admin's job is not hers
    assert bob_job["status"] == "queued"


def test_fsck_repair_refuses_while_a_daemon_holds_the_directory(tmp_path: Path) -> None:
    from fetchml.server.files import lock_data_dir

    held = lock_data_dir(tmp_path)
    try:
        assert fsck(tmp_path, repair=True) == 2
    finally:
        import os

        os.close(held)
    assert fsck(tmp_path, repair=True) == 0


def test_cluster_nodes_share_the_directory_and_standalone_daemons_and_repair_do_not(
    tmp_path: Path,
) -> None:
    import os

    from fetchml.server.files import DataDirBusy, lock_data_dir

    nodes = [lock_data_dir(tmp_path, shared=True) for _ in range(2)]
    try:
        with pytest.raises(DataDirBusy, match="in use by another fetchml-server"):
            lock_data_dir(tmp_path)
        assert fsck(tmp_path, repair=True) == 2
    finally:
        for fd in nodes:
            os.close(fd)
    standalone = lock_data_dir(tmp_path)
    try:
        with pytest.raises(DataDirBusy, match="in use by a standalone fetchml-server or fsck"):
            lock_data_dir(tmp_path, shared=True)
    finally:
        os.close(standalone)
