"""UPDATE_RUN: run.json, the merge patch, server times, the derived `crashed`, errors."""

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from fetchml.protocol.enums import ErrorCode, PruneType
from fetchml.protocol.requests import (
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    ListRuns,
    LogMetric,
    Prune,
    UpdateRun,
)
from fetchml.protocol.responses import Success
from tests.support.config import make_config
from tests.support.experiments import commit_id, write_experiment
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, KEYS, UNKNOWN_KEY, hash_of, key_entry, key_hash
from tests.support.wire import RawClient, data_of, error_of

CID = commit_id("run-a")
ALICE, BOB, ANA = hash_of("alice"), hash_of("bob"), hash_of("ana")


class Clock:
    """The daemon's server clock for run documents, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def create(
    client: RawClient, cid: bytes = CID, key: bytes = ALICE, name: str = "train"
) -> None:
    resp = await client.call(CreateExperiment(key_hash=key, commit_id=cid, job_name=name))
    assert isinstance(resp, Success), resp


async def update(client: RawClient, patch: Any, cid: bytes = CID, key: bytes = ALICE) -> Any:
    text = patch if isinstance(patch, str) else json.dumps(patch)
    return data_of(await client.call(UpdateRun(key_hash=key, commit_id=cid, patch=text)), "run")


async def refused(
    client: RawClient,
    patch: str,
    code: ErrorCode,
    message: str | None = None,
    cid: bytes = CID,
    key: bytes = ALICE,
) -> str:
    resp = await client.call(UpdateRun(key_hash=key, commit_id=cid, patch=patch))
    return error_of(resp, code, message).message


def run_file(daemon: Daemon, cid: bytes = CID) -> Path:
    return Path(daemon.config.storage.base_path) / cid.hex() / "run.json"


def clocked(daemon: Daemon, now: float) -> Clock:
    clock = Clock(now)
    assert daemon.app.ctx is not None
    daemon.app.ctx.runs.clock = clock
    return clock


async def test_update_run_creates_and_merges(daemon: Daemon) -> None:
    clock = clocked(daemon, 1_800_000_000)
    client = await daemon.client()
    await create(client)
    doc = await update(client, {})
    assert doc == {
        "name": "train",
        "project": "",
        "git_commit": None,
        "params": {},
        "tags": [],
        "notes": "",
        "host": None,
        "pid": None,
        "status": None,
        "output": "",
        "created_at": 1_800_000_000,
        "started_at": None,
        "ended_at": None,
        "heartbeat_at": 1_800_000_000,
    }
    path = run_file(daemon)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == doc
    clock.now += 5
    doc = await update(
        client,
        {
            "name": "r1",
            "params": {"lr": 0.1, "opt": "adam", "b": True},
            "tags": ["a", "b"],
            "status": "running",
            "heartbeat": True,
            "git_commit": "ab" * 20,
        },
    )
    assert doc["name"] == "r1" and doc["params"] == {"lr": 0.1, "opt": "adam", "b": True}
    assert (doc["started_at"], doc["ended_at"], doc["heartbeat_at"]) == (
        1_800_000_005,
        None,
        1_800_000_005,
    )
    assert doc["created_at"] == 1_800_000_000
    clock.now += 5
    doc = await update(client, {"params": {"lr": None, "wd": 1}, "tags": ["c"], "git_commit": None})
    assert doc["params"] == {"opt": "adam", "b": True, "wd": 1}
    assert doc["tags"] == ["c"] and doc["git_commit"] is None
    doc = await update(client, {"status": "finished"})
    assert (doc["started_at"], doc["ended_at"]) == (1_800_000_005, 1_800_000_010)
    clock.now += 5
    doc = await update(client, {"status": "finished"})  # repeated: untouched
    assert doc["ended_at"] == 1_800_000_010 and doc["heartbeat_at"] == 1_800_000_015
    doc = await update(client, {"status": "failed"})
    assert doc["ended_at"] == 1_800_000_015
    doc = await update(client, {"status": "running"})
    assert (doc["started_at"], doc["ended_at"]) == (1_800_000_005, None)
    doc = await update(client, {"name": None, "params": None, "tags": None, "status": None})
    assert (doc["name"], doc["params"], doc["tags"], doc["status"]) == ("train", {}, [], None)
    assert json.loads(path.read_text()) == doc


MIA = key_hash("fml_test_mia_key")


async def member_daemon(start_daemon: DaemonFactory, tmp_path: Path, **sections: Any) -> Daemon:
    """The test keys plus mia, of the built-in role `member` (reads all, writes own)."""
    keys = {user: key_entry(key, role) for user, (role, key) in KEYS.items()}
    keys["mia"] = key_entry("fml_test_mia_key", "member")
    config = make_config(tmp_path, auth={"api_keys": keys}, **sections)
    return await start_daemon(config)  # type: ignore[no-any-return]


async def get_run(client: RawClient, cid: bytes = CID, key: bytes = ADMIN) -> Any:
    resp = await client.call(GetExperiment(key_hash=key, commit_id=cid))
    return data_of(resp, "experiment")["run"]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("", "patch: invalid JSON"),
        ("[]", "patch: expected a JSON object"),
        ('{"name": ""}', "name: must be a string of 1..255 bytes"),
        ('{"params": {"lr": [1]}}', "params.lr: must be a string, a number or a boolean"),
        ('{"params": {"opt": {"lr": 1}}}', "params.opt: must be a string, a number or a boolean"),
        ('{"params": {"lr": NaN}}', "params.lr: NaN is not JSON"),
        ('{"params": {"n": 9007199254740993}}', "params.n: integer beyond"),
        ('{"tags": ["a", "a"]}', "tags: tags must be distinct"),
        ('{"name": "a", "name": "b"}', "name: duplicate key"),
        ('{"created_at": 5}', "created_at: written by the server"),
        ('{"heartbeat_at": null}', "heartbeat_at: written by the server"),
        ('{"heartbeat": false}', "heartbeat: must be true"),
        ('{"colour": "red"}', "colour: unknown key"),
        ('{"pid": -1}', "pid: must be an integer"),
        ('{"status": "done"}', "status: must be one of"),
        ('{"git_commit": "ABC"}', "git_commit: must be 40 lowercase hex"),
        ('{"notes": "\\u0000"}', "notes: lone surrogate or U+0000"),
    ],
)
async def test_bad_patch_is_invalid_request_naming_its_key(
    daemon: Daemon, patch: str, message: str
) -> None:
    client = await daemon.client()
    await create(client)
    await update(client, {"name": "kept"})
    before = run_file(daemon).read_bytes()
    text = await refused(client, patch, ErrorCode.INVALID_REQUEST)
    assert text.startswith(message), text
    # checked before existence: the same patch on a missing experiment
    other = commit_id("missing")
    text = await refused(client, patch, ErrorCode.INVALID_REQUEST, cid=other)
    assert text.startswith(message), text
    assert run_file(daemon).read_bytes() == before


async def test_order_of_checks(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    daemon = await member_daemon(start_daemon, tmp_path)
    client = await daemon.client()
    await create(client)  # alice's
    bad = '{"colour": 1}'
    missing = commit_id("missing")
    error_of(
        await client.call(UpdateRun(key_hash=UNKNOWN_KEY, commit_id=CID, patch=bad)),
        ErrorCode.AUTHENTICATION_FAILED,
    )
    # permission before the patch (the analyst may not update)
    await refused(client, bad, ErrorCode.PERMISSION_DENIED, "Insufficient permissions", key=ANA)
    # existence before scope
    await refused(client, "{}", ErrorCode.RESOURCE_NOT_FOUND, cid=missing, key=BOB)
    # scope before the merged document's limits
    await update(client, {"params": {f"p{i}": "x" * 4000 for i in range(16)}})
    before = run_file(daemon).read_bytes()
    notes = json.dumps({"notes": "n" * 4096})
    await refused(client, notes, ErrorCode.PERMISSION_DENIED, cid=CID, key=BOB)
    await refused(client, "{}", ErrorCode.PERMISSION_DENIED, cid=CID, key=MIA)
    text = await refused(client, notes, ErrorCode.INVALID_REQUEST)
    assert text.startswith("run: document too large (") and text.endswith(" > 65536)"), text
    assert run_file(daemon).read_bytes() == before
    # member: writes its own, reads everyone's
    mine = commit_id("mia")
    await create(client, mine, key=MIA)
    assert (await update(client, {"project": "p"}, cid=mine, key=MIA))["project"] == "p"
    listed = data_of(await client.call(ListRuns(key_hash=MIA)), "runs")
    assert {row["id"] for row in listed["runs"]} == {CID.hex(), mine.hex()}
    assert (await get_run(client, CID, key=MIA))["params"]["p0"] == "x" * 4000


async def test_merged_limits_change_nothing(daemon: Daemon) -> None:
    client = await daemon.client()
    await create(client)
    await update(client, {"params": {f"a{i}": i for i in range(600)}})
    before = run_file(daemon).read_bytes()
    text = await refused(
        client,
        json.dumps({"params": {f"b{i}": i for i in range(401)}}),
        ErrorCode.INVALID_REQUEST,
    )
    assert text == "params: more than 1000 keys (1001)"
    assert run_file(daemon).read_bytes() == before
    doc = await update(client, {"params": {f"b{i}": i for i in range(400)}})
    assert len(doc["params"]) == 1000


@pytest.mark.parametrize(
    "kind",
    ["not json", "array", "too large", "not utf-8", "bad value", "symlink", "directory", "fifo"],
)
async def test_unreadable_document(daemon: Daemon, kind: str, tmp_path: Path) -> None:
    client = await daemon.client()
    await create(client)
    path = run_file(daemon)
    target = tmp_path / "elsewhere.json"
    target.write_text('{"name": "not mine"}')
    if kind == "not json":
        path.write_text('{"name": ')
    elif kind == "array":
        path.write_text("[]")
    elif kind == "too large":
        path.write_text(json.dumps({"notes": "x" * 65536}))
    elif kind == "not utf-8":
        path.write_bytes(b'{"name": "\xff"}')
    elif kind == "bad value":
        path.write_text('{"status": "sleeping"}')
    elif kind == "symlink":
        path.symlink_to(target)
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    await refused(client, "{}", ErrorCode.STORAGE_ERROR, "run document unreadable")
    assert await get_run(client) is None
    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert [row["run"] for row in listed] == [None]
    page = data_of(await client.call(ListRuns(key_hash=ADMIN)), "runs")
    assert [row["run"] for row in page["runs"]] == [None]
    assert target.read_text() == '{"name": "not mine"}'
    assert os.path.lexists(path)
    if kind != "fifo":  # repaired by hand: served again at once
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
        assert (await update(client, {}))["name"] == "train"


async def test_experiment_without_document(daemon: Daemon) -> None:
    """Old clients and the Go manager: no run.json, "run": null everywhere, nothing written."""
    client = await daemon.client()
    await create(client)
    log = LogMetric(key_hash=ALICE, commit_id=CID, step=1, value=0.5, name="loss")
    assert isinstance(await client.call(log), Success)
    assert await get_run(client) is None
    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert listed[0]["run"] is None and listed[0]["metrics_count"] == 1
    page = data_of(await client.call(ListRuns(key_hash=ADMIN)), "runs")
    assert page["runs"][0]["run"] is None and page["runs"][0]["metrics_count"] == 1
    assert not run_file(daemon).exists()


async def test_default_name_is_the_id_without_a_job_name(daemon: Daemon) -> None:
    client = await daemon.client()
    await create(client, name="")
    assert (await update(client, {}))["name"] == CID.hex()
    assert (await update(client, {"name": "n"}))["name"] == "n"
    assert (await update(client, {"name": None}))["name"] == CID.hex()


async def test_crashed_is_derived_and_never_written(daemon: Daemon) -> None:
    clock = clocked(daemon, 1_900_000_000)
    client = await daemon.client()
    await create(client)
    other = commit_id("other")
    await create(client, other)
    await update(client, {"status": "running"})
    await update(client, {"status": "running"}, cid=other)
    limit = daemon.config.runs.crash_after_s
    clock.now += limit

    async def statuses(query: Any = None) -> list[Any]:
        text = json.dumps(query or {})
        page = data_of(await client.call(ListRuns(key_hash=ADMIN, filter=text)), "runs")
        return [(row["id"], row["run"]["status"]) for row in page["runs"]]

    assert await get_run(client) == json.loads(run_file(daemon).read_text())  # not yet
    clock.now += 1
    assert (await get_run(client))["status"] == "crashed"
    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert {row["run"]["status"] for row in listed} == {"crashed"}
    assert await statuses({"status": "running"}) == []
    assert len(await statuses({"status": "crashed"})) == 2
    assert json.loads(run_file(daemon).read_text())["status"] == "running"
    # an append brings back `running` (the other stays crashed)
    log = LogMetric(key_hash=ALICE, commit_id=CID, step=1, value=0.5, name="loss")
    assert isinstance(await client.call(log), Success)
    assert await statuses({"status": "running"}) == [(CID.hex(), "running")]
    assert await statuses({"status": "crashed"}) == [(other.hex(), "crashed")]
    # so does a heartbeat, and UPDATE_RUN's answer reports the rule too
    assert (await update(client, {"heartbeat": True}, cid=other))["status"] == "running"
    clock.now += limit + 1
    assert (await update(client, {"notes": "n"}))["status"] == "running"  # it is a heartbeat
    assert (await get_run(client, other))["status"] == "crashed"


async def test_crash_rule_after_restart_uses_metrics_mtime(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    base = tmp_path / "experiments"
    path = write_experiment(
        base, CID, timestamp=1_700_000_000, records=[(1_700_000_000, 0, 1.0, "x")]
    )
    old = 1_700_000_000
    doc = {"status": "running", "created_at": old, "heartbeat_at": old, "name": "r"}
    (path / "run.json").write_text(json.dumps(doc))
    daemon = await start_daemon()
    client = await daemon.client()
    assert (await get_run(client))["status"] == "running"  # metrics.bin written just now
    os.utime(path / "metrics.bin", (old, old))
    assert (await get_run(client))["status"] == "crashed"


async def test_update_runs_are_serialized_across_connections(daemon: Daemon) -> None:
    first, second = await daemon.client(), await daemon.client()
    await create(first)

    async def hammer(client: RawClient, prefix: str) -> None:
        for i in range(20):
            await client.send(
                UpdateRun(
                    key_hash=ALICE, commit_id=CID, patch=json.dumps({"params": {f"{prefix}{i}": i}})
                )
            )
        for _ in range(20):
            data_of(await client.recv(), "run")

    await asyncio.gather(hammer(first, "a"), hammer(second, "b"))
    doc = await get_run(first)
    assert len(doc["params"]) == 40
    assert json.loads(run_file(daemon).read_text()) == doc


async def test_update_run_is_never_rate_limited_nor_audited(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = await start_daemon(rate_limit={"control_requests_per_minute": 2})
    client = await daemon.client()
    await create(client)  # 1 control request
    for _ in range(5):
        await update(client, {})
    data_of(await client.call(ListRuns(key_hash=ALICE)), "runs")  # the second
    error_of(await client.call(ListRuns(key_hash=ALICE)), ErrorCode.SERVER_OVERLOADED)
    audit = (tmp_path / "audit.jsonl").read_text()
    assert "create_experiment" in audit and "run" not in audit.replace("create_experiment", "")


async def test_prune_removes_run_json(daemon: Daemon) -> None:
    write_experiment(Path(daemon.config.storage.base_path), CID, timestamp=1_700_000_000)
    client = await daemon.client()
    await update(client, {"name": "gone"})
    directory = run_file(daemon).parent
    resp = await client.call(Prune(key_hash=ADMIN, prune_type=PruneType.OLDER_THAN_DAYS, value=1))
    assert data_of(resp, "pruned") == {"pruned": [CID.hex()]}
    assert not os.path.lexists(directory)
    assert data_of(await client.call(ListRuns(key_hash=ADMIN)), "runs")["total"] == 0
    error_of(
        await client.call(UpdateRun(key_hash=ALICE, commit_id=CID, patch="{}")),
        ErrorCode.RESOURCE_NOT_FOUND,
    )
