"""LIST_RUNS: filters, read scope, order, paging, the message cut, fresh metrics_count."""

import json
from pathlib import Path
from typing import Any

import pytest

from fetchml.protocol.requests import ListRuns, LogMetric, UpdateRun
from tests.support.experiments import by_byte, record, write_experiment
from tests.support.inproc import DaemonFactory
from tests.support.keys import ADMIN, hash_of
from tests.support.wire import RawClient, data_of

ALICE, BOB = hash_of("alice"), hash_of("bob")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "experiments"


async def page(client: RawClient, query: Any = None, key: bytes = ADMIN) -> Any:
    text = query if isinstance(query, str) else json.dumps(query or {})
    return data_of(await client.call(ListRuns(key_hash=key, filter=text)), "runs")


def ids(result: Any) -> list[str]:
    return [row["id"] for row in result["runs"]]


async def patch(client: RawClient, cid: bytes, doc: Any, key: bytes = ADMIN) -> Any:
    resp = await client.call(UpdateRun(key_hash=key, commit_id=cid, patch=json.dumps(doc)))
    return data_of(resp, "run")


async def test_id_prefix_paging_and_fresh_count(start_daemon: DaemonFactory, base: Path) -> None:
    cids = [by_byte(n) for n in (1, 2, 3, 4, 5)]
    for n, cid in enumerate(cids):
        write_experiment(base, cid, timestamp=1_700_000_000 + n, user="alice")
    daemon = await start_daemon()
    client = await daemon.client()
    doc = await patch(client, cids[2], {"name": "third"})
    result = await page(client, {"id": cids[2].hex()})
    assert result == {
        "runs": [
            {
                "id": cids[2].hex(),
                "metrics_count": 0,
                "metadata": {
                    "commit_id": cids[2].hex(),
                    "timestamp": 1_700_000_002,
                    "job_name": "seeded",
                    "user": "alice",
                },
                "run": doc,
            }
        ],
        "total": 1,
        "next_offset": None,
    }
    for step in range(3):
        await client.send(
            LogMetric(key_hash=ADMIN, commit_id=cids[2], step=step, value=1.0, name="x")
        )
    for _ in range(3):
        await client.recv()
    assert (await page(client, {"id": cids[2].hex()}))["runs"][0]["metrics_count"] == 3
    # another process appends: counted at request time
    with open(base / cids[2].hex() / "metrics.bin", "ab") as f:
        f.write(record(9))
    assert (await page(client, {"id": cids[2].hex()}))["runs"][0]["metrics_count"] == 4

    newest = [c.hex() for c in reversed(cids)]
    first = await page(client, {"limit": 2})
    assert (ids(first), first["total"], first["next_offset"]) == (newest[:2], 5, 2)
    second = await page(client, {"limit": 2, "offset": 2})
    assert (ids(second), second["next_offset"]) == (newest[2:4], 4)
    last = await page(client, {"limit": 2, "offset": 4})
    assert (ids(last), last["next_offset"]) == (newest[4:], None)
    assert await page(client, {"offset": 5}) == {"runs": [], "total": 5, "next_offset": None}
    assert ids(await page(client, {"order": "oldest"})) == newest[::-1]
    assert (await page(client, {"id": "0"}))["total"] == 5  # by_byte IDs start with 0
