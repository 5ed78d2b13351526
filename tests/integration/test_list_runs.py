"""LIST_RUNS: filters, read scope, order, paging, the message cut, fresh metrics_count."""

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.requests import GetExperiment, ListExperiments, ListRuns, LogMetric, UpdateRun
from fetchml.protocol.responses import decode_response
from tests.support.experiments import by_byte, record, write_experiment
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, UNKNOWN_KEY, hash_of
from tests.support.wire import RawClient, data_of, error_of

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
    resp = await client.call(
        UpdateRun(key_hash=key, commit_id=cid, patch=json.dumps(doc, ensure_ascii=False))
    )
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


def make_runs(base: Path) -> dict[str, str]:
    """Six experiments: five with run documents written by hand, one without."""
    docs: list[tuple[int, str, int, dict[str, Any] | None]] = [
        (
            1,
            "alice",
            100,
            {
                "name": "resnet-a",
                "project": "vision",
                "status": "finished",
                "tags": ["best", "gpu"],
                "git_commit": "ab" * 20,
                "params": {"lr": 0.1, "layers": 50, "opt": "adam", "aug": True},
            },
        ),
        (
            2,
            "alice",
            200,
            {
                "name": "resnet-b",
                "project": "vision",
                "status": "failed",
                "tags": ["gpu"],
                "git_commit": "abcd" + "0" * 36,
                "params": {"lr": 1, "layers": 50.0, "opt": "sgd", "aug": False},
            },
        ),
        (
            3,
            "bob",
            200,
            {
                "name": "bert",
                "project": "nlp",
                "status": "finished",
                "params": {"lr": "1", "aug": 1},
            },
        ),
        (4, "bob", 300, {"name": "gpt", "project": "nlp", "status": None}),
        (5, "alice", 50, None),  # no document: job_name "seeded"
        (6, "bob", 400, {"name": "empty"}),
    ]
    for n, user, ts, doc in docs:
        path = write_experiment(base, by_byte(n), timestamp=1_700_000_000 + ts, user=user)
        if doc is not None:
            (path / "run.json").write_text(json.dumps(doc))
    return {f"r{n}": by_byte(n).hex() for n, *_ in docs}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["r6", "r4", "r2", "r3", "r1", "r5"]),
        ({"order": "oldest"}, ["r5", "r1", "r2", "r3", "r4", "r6"]),
        ({"user": "bob"}, ["r6", "r4", "r3"]),
        ({"name": "resnet"}, ["r2", "r1"]),
        ({"name": "seed"}, ["r5"]),  # job_name without a document
        ({"name": "Resnet"}, []),
        ({"project": "nlp"}, ["r4", "r3"]),
        ({"project": ""}, ["r6"]),
        ({"status": "finished"}, ["r3", "r1"]),
        ({"tag": "gpu"}, ["r2", "r1"]),
        ({"git_commit": "abab"}, ["r1"]),
        ({"git_commit": "ab"}, ["r2", "r1"]),
        ({"params": {}}, ["r6", "r4", "r2", "r3", "r1", "r5"]),
        ({"params": {"lr": 1}}, ["r2"]),
        ({"params": {"lr": 1.0}}, ["r2"]),
        ({"params": {"lr": "1"}}, ["r3"]),
        ({"params": {"layers": 50}}, ["r2", "r1"]),
        ({"params": {"aug": True}}, ["r1"]),
        ({"params": {"aug": 1}}, ["r3"]),
        ({"params": {"aug": False}}, ["r2"]),
        ({"params": {"opt": "adam", "lr": 0.1}}, ["r1"]),
        ({"params": {"opt": "Adam"}}, []),
        ({"id": "03"}, ["r3"]),
        ({"user": "alice", "project": "vision", "tag": "best"}, ["r1"]),
    ],
)
async def test_filters(
    start_daemon: DaemonFactory, base: Path, query: Any, expected: list[str]
) -> None:
    names = make_runs(base)
    by_id = {v: k for k, v in names.items()}
    daemon = await start_daemon()
    client = await daemon.client()
    result = await page(client, query)
    assert [by_id[i] for i in ids(result)] == expected
    assert result["total"] == len(expected)


async def test_scope_unreadable_meta_and_damaged(start_daemon: DaemonFactory, base: Path) -> None:
    names = make_runs(base)
    write_experiment(base, by_byte(0xEE), timestamp=0, meta=b"\x01\x00")
    (base / ("f" * 40)).write_bytes(b"not a directory")
    daemon = await start_daemon()
    client = await daemon.client()
    everything = await page(client)
    assert ids(everything)[-2:] == [by_byte(0xEE).hex(), "f" * 40]  # unreadable last, by ID
    for row in everything["runs"][-2:]:
        assert row["metadata"] == {
            "commit_id": row["id"],
            "timestamp": None,
            "job_name": None,
            "user": None,
        }
        assert (row["run"], row["metrics_count"]) == (None, 0)
    assert ids(await page(client, {"order": "oldest"}))[-2:] == [by_byte(0xEE).hex(), "f" * 40]
    assert (await page(client, {"project": "nlp"}))["total"] == 2
    bob = await page(client, {}, key=BOB)  # read scope own
    assert ids(bob) == [names["r6"], names["r4"], names["r3"]] and bob["total"] == 3
    assert (await page(client, {"user": "alice"}, key=BOB))["total"] == 0
    ana = await page(client, {}, key=hash_of("ana"))  # analyst: reads all
    assert ana["total"] == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "filter: expected a JSON object"),
        ("{", "filter: invalid JSON"),
        ('{"limit": 0}', "limit: must be an integer 1..1000"),
        ('{"limit": 1001}', "limit: must be an integer 1..1000"),
        ('{"limit": 1.0}', "limit: must be an integer 1..1000"),
        ('{"offset": -1}', "offset: must be an integer >= 0"),
        ('{"order": "new"}', "order: must be newest or oldest"),
        ('{"status": "done"}', "status: must be one of"),
        ('{"id": "ABC"}', "id: must be 1..40 lowercase hex characters"),
        ('{"git_commit": ""}', "git_commit: must be 1..40 lowercase hex characters"),
        ('{"tag": ""}', "tag: must be a string of 1..64 bytes"),
        ('{"params": {"lr": null}}', "params.lr: must be a string, a number or a boolean"),
        ('{"params": {"lr": [1]}}', "params.lr: must be a string, a number or a boolean"),
        ('{"params": {"lr": {}}}', "params.lr: must be a string, a number or a boolean"),
        ('{"params": 1}', "params: must be an object"),
        ('{"user": 1}', "user: must be a string"),
        ('{"colour": "red"}', "colour: unknown key"),
        ('{"limit": 5, "limit": 6}', "limit: duplicate key"),
    ],
)
async def test_bad_filter_is_invalid_request_naming_its_key(
    daemon: Daemon, text: str, message: str
) -> None:
    client = await daemon.client()
    resp = await client.call(ListRuns(key_hash=ADMIN, filter=text))
    assert error_of(resp, ErrorCode.INVALID_REQUEST).message.startswith(message)


async def test_empty_filter_and_permission(daemon: Daemon) -> None:
    client = await daemon.client()
    assert await page(client, "") == {"runs": [], "total": 0, "next_offset": None}
    resp = await client.call(ListRuns(key_hash=UNKNOWN_KEY, filter="{}"))
    error_of(resp, ErrorCode.AUTHENTICATION_FAILED)


BIG = 131072


async def big_runs(client: RawClient, base: Path, n: int) -> list[str]:
    """`n` runs with ~60 KB documents (two fit in a 131072-byte message, three do not)."""
    out = []
    for i in range(n):
        cid = by_byte(0x40 + i)
        write_experiment(base, cid, timestamp=1_700_000_000 + i, user="alice")
        params = {f"p{k}": chr(0x4E00 + i) * 1300 for k in range(15)}  # 3 bytes each in UTF-8
        doc = await patch(client, cid, {"params": params})
        assert len(json.dumps(doc, ensure_ascii=False).encode()) > 58000
        out.append(cid.hex())
    return out[::-1]  # newest first


async def test_page_is_cut_to_max_message_bytes(start_daemon: DaemonFactory, base: Path) -> None:
    daemon = await start_daemon(server={"max_message_bytes": BIG})
    client = await daemon.client()
    newest = await big_runs(client, base, 5)
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        await client.send(ListRuns(key_hash=ADMIN, filter=json.dumps({"offset": offset})))
        raw = await client.ws.recv()
        assert isinstance(raw, bytes) and len(raw) <= BIG
        result = data_of(decode_response(raw), "runs")
        assert len(result["runs"]) == 2 or offset == 4
        assert result["total"] == 5
        seen += ids(result)
        offset = result["next_offset"]
    assert seen == newest
    # never below one row: a limit of one, and the last page
    assert ids(await page(client, {"limit": 1, "offset": 4})) == newest[4:]


async def test_list_experiments_is_the_prefix_that_fits(
    start_daemon: DaemonFactory, base: Path
) -> None:
    daemon = await start_daemon(server={"max_message_bytes": BIG})
    client = await daemon.client()
    newest = await big_runs(client, base, 3)
    await client.send(ListExperiments(key_hash=ADMIN))
    raw = await client.ws.recv()
    assert isinstance(raw, bytes) and len(raw) <= BIG
    listed = data_of(decode_response(raw), "experiments")
    assert [row["commit_id"] for row in listed] == newest[:2]
    assert listed[0]["run"]["params"]["p0"] == chr(0x4E02) * 1300


async def test_get_experiment_counts_the_document(start_daemon: DaemonFactory, base: Path) -> None:
    daemon = await start_daemon(server={"max_message_bytes": BIG})
    client = await daemon.client()
    cid = by_byte(0x30)
    write_experiment(
        base,
        cid,
        timestamp=1_700_000_000,
        user="alice",
        records=[(1_700_000_000, step, 0.5, "loss") for step in range(2000)],
    )

    async def get() -> tuple[int, Any]:
        await client.send(GetExperiment(key_hash=ADMIN, commit_id=cid))
        raw = await client.ws.recv()
        assert isinstance(raw, bytes)
        return len(raw), data_of(decode_response(raw), "experiment")

    size, plain = await get()
    assert not plain["metrics_truncated"] and plain["run"] is None
    await patch(client, cid, {"notes": "\u00e9" * 2000, "output": "\u4e00" * 5000})
    size, doc = await get()
    assert size <= BIG and doc["metrics_truncated"]
    assert doc["run"]["output"] == "\u4e00" * 5000
    kept = doc["metrics"]
    assert 0 < len(kept) < 2000 and kept[-1]["step"] == 1999  # the newest that fit
    assert size > BIG - 400  # and as many as fit (the daemon keeps 256 bytes for the header)


async def test_documents_changed_outside_are_seen(daemon: Daemon, base: Path) -> None:
    cid = by_byte(0x21)
    path = write_experiment(base, cid, timestamp=1_700_000_000, user="alice")
    client = await daemon.client()
    await patch(client, cid, {"name": "aaaa", "output": "o" * 8000})  # cached without output
    assert (await page(client, {"name": "aaaa"}))["runs"][0]["run"]["output"] == "o" * 8000
    text = (path / "run.json").read_text()
    stat = (path / "run.json").stat()
    with open(path / "run.json", "r+") as f:  # same size, in place
        f.write(text.replace("aaaa", "bbbb"))
    os.utime(path / "run.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert (await page(client, {"name": "aaaa"}))["total"] == 0
    assert (await page(client, {"name": "bbbb"}))["total"] == 1
    tmp = path / "elsewhere"
    tmp.write_text(json.dumps({"name": "cccc"}))
    os.rename(tmp, path / "run.json")  # replaced
    assert ids(await page(client, {"name": "cccc"})) == [cid.hex()]
    (path / "run.json").unlink()
    assert (await page(client, {"id": cid.hex()}))["runs"][0]["run"] is None
