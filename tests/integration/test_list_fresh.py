"""LIST_EXPERIMENTS counts and serializes only the prefix that fits, and keeps what it
found (the order, each item's JSON) only while nothing it was made of changed: another
process's appends, new, removed or rewritten experiments and run documents show in the
very next listing."""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from fetchml.protocol.requests import ListExperiments, UpdateRun
from fetchml.server.lister import LIST_CHUNK
from tests.support.experiments import big_metrics, make_experiment, meta_bytes, record
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN
from tests.support.wire import RawClient, call_json

PARAMS = {f"p{i}": "x" * 4000 for i in range(14)}
"""Two documents with these params fill most of a 128 KiB message."""


def cid(n: int) -> str:
    return f"{n:02x}" * 20


def experiment(base: Path, n: int, timestamp: int, metrics: bytes = b"") -> Path:
    return make_experiment(base, cid(n), metrics or None, meta_bytes(cid(n), timestamp=timestamp))


async def listed(client: RawClient) -> list[dict[str, Any]]:
    return await call_json(client, ListExperiments(key_hash=ADMIN))  # type: ignore[no-any-return]


async def counts(client: RawClient) -> dict[str, int]:
    return {item["commit_id"]: item["metrics_count"] for item in await listed(client)}


async def update(client: RawClient, n: int, patch: dict[str, Any]) -> Any:
    req = UpdateRun(key_hash=ADMIN, commit_id=bytes.fromhex(cid(n)), patch=json.dumps(patch))
    return await call_json(client, req)


def base_of(daemon: Daemon) -> Path:
    return Path(daemon.config.storage.base_path)


async def test_experiments_past_the_page_are_not_counted(start_daemon: DaemonFactory) -> None:
    """Three large run documents fill the page after two; the oldest experiment, whose
    file is big enough to need indexing when counted, is far past it (more than a
    counting step, LIST_CHUNK): it is never opened (no sidecars appear)."""
    daemon = await start_daemon(
        server={"max_message_bytes": 128 << 10}, storage={"index_bytes": 4096}
    )
    base = base_of(daemon)
    for n in range(3):
        experiment(base, 255 - n, 1764009000 - n, record(0))
    for n in range(1, LIST_CHUNK + 50):
        make_experiment(base, f"{n:040x}", record(0), meta_bytes(f"{n:040x}", timestamp=1764005000))
    experiment(base, 0, 1764000000, big_metrics(2_000))
    client = await daemon.client()
    for n in range(3):
        await update(client, 255 - n, {"params": PARAMS})
    assert [item["commit_id"] for item in await listed(client)] == [cid(255), cid(254)]
    assert not (base / cid(0) / "index").exists()


async def test_outside_changes_show_in_the_next_listing(daemon: Daemon) -> None:
    base = base_of(daemon)
    for n in range(1, 4):
        experiment(base, n, 1764000000 + n, record(0))
    client = await daemon.client()
    assert await counts(client) == {cid(3): 1, cid(2): 1, cid(1): 1}
    with open(base / cid(2) / "metrics.bin", "ab") as f:  # another process appends
        f.write(record(1) + record(2))
    assert (await counts(client))[cid(2)] == 3
    # meta.bin replaced by a rename: the oldest becomes the newest
    newer = meta_bytes(cid(1), timestamp=1764000100)
    (base / cid(1) / "meta.tmp").write_bytes(newer)
    os.rename(base / cid(1) / "meta.tmp", base / cid(1) / "meta.bin")
    assert [item["commit_id"] for item in await listed(client)] == [cid(1), cid(3), cid(2)]
    experiment(base, 4, 1764000050, record(0))  # one created, one removed
    shutil.rmtree(base / cid(3))
    assert await counts(client) == {cid(1): 1, cid(4): 1, cid(2): 3}


async def test_run_documents_are_current_in_every_listing(daemon: Daemon) -> None:
    """An item's JSON is made again after an UPDATE_RUN and after another process
    rewrote run.json, however soon the next listing comes."""
    base = base_of(daemon)
    experiment(base, 1, 1764000000, record(0))
    client = await daemon.client()
    await update(client, 1, {"name": "first"})
    assert (await listed(client))[0]["run"]["name"] == "first"
    await update(client, 1, {"name": "second"})
    assert (await listed(client))[0]["run"]["name"] == "second"
    path = base / cid(1) / "run.json"
    doc = json.loads(path.read_text())
    doc["name"] = "outside"
    (base / cid(1) / "run.tmp").write_text(json.dumps(doc))
    os.chmod(base / cid(1) / "run.tmp", 0o600)
    os.rename(base / cid(1) / "run.tmp", path)
    assert (await listed(client))[0]["run"]["name"] == "outside"
