"""UPDATE_RUN: run.json, the merge patch, server times, the derived `crashed`, errors."""

import json
import os
import stat
from pathlib import Path
from typing import Any

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.requests import (
    CreateExperiment,
    UpdateRun,
)
from fetchml.protocol.responses import Success
from tests.support.experiments import commit_id
from tests.support.inproc import Daemon
from tests.support.keys import hash_of
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
