"""A restarted daemon answers from the sidecars (index/ beside metrics.bin) instead of
scanning the file again, extends them with what is appended, and never trusts them when
they no longer describe the file.

The proof that nothing is rescanned: after the first daemon wrote the sidecars, the
file's first record is broken in place, far before the bytes a checkpoint's digest
covers. A daemon that scanned the file would find an empty valid prefix; one that trusts
the checkpoint answers with every record, and the moment the checkpoint is damaged it
scans and answers 0.
"""

import json
import os
from pathlib import Path
from typing import Any

from fetchml.protocol.metrics import MetricRecord, decode_records
from fetchml.protocol.requests import GetExperiment, ListExperiments, ListRuns, QueryMetrics
from tests.support.experiments import big_metrics, make_experiment, meta_bytes, record
from tests.support.inproc import in_process_daemons
from tests.support.keys import ADMIN
from tests.support.lttb import reference_lttb
from tests.support.wire import RawClient, call_json, log, page_of

COMMIT = "5e" * 20
N = 20_000
NAMES = (b"loss", b"grad", b"acc_")
SIDECARS = {"index_bytes": 64 << 10}


def commit_bytes() -> bytes:
    return bytes.fromhex(COMMIT)


async def answers(client: RawClient) -> dict[str, Any]:
    """count (LIST, LIST_RUNS, GET), GET's newest records, first and last per name, LTTB
    of one name, and one name's page in a step range."""
    cid = commit_bytes()
    listing = await call_json(client, ListExperiments(key_hash=ADMIN))
    runs = await call_json(client, ListRuns(key_hash=ADMIN, filter=json.dumps({"id": COMMIT})))
    doc = await call_json(client, GetExperiment(key_hash=ADMIN, commit_id=cid))

    async def query(**fields: Any) -> list[MetricRecord]:
        req = QueryMetrics(key_hash=ADMIN, commit_id=cid, **fields)
        return list(page_of(await client.call(req)).records)

    return {
        "list": [item["metrics_count"] for item in listing if item["commit_id"] == COMMIT],
        "runs": [row["metrics_count"] for row in runs["runs"]],
        "get": doc["metrics_count"],
        "newest": [(m["step"], m["name"]) for m in doc["metrics"][-3:]],
        "ends": await query(max_points=2),
        "lttb": await query(name="grad", max_points=50),
        "page": await query(name="acc_", step_from=300, step_to=360, limit=10),
    }


def expected(data: bytes) -> dict[str, Any]:
    records = decode_records(data)
    by_name: dict[str, list[MetricRecord]] = {}
    for r in records:
        by_name.setdefault(r.name, []).append(r)
    grad = by_name["grad"]
    lttb = reference_lttb([(r.step, r.value) for r in grad], 50)
    return {
        "list": [len(records)],
        "runs": [len(records)],
        "get": len(records),
        "newest": [(r.step, r.name) for r in records[-3:]],
        "ends": [r for rs in by_name.values() for r in rs[:1] + rs[1:][-1:]],
        "lttb": [grad[i] for i in lttb],
        "page": [r for r in by_name["acc_"] if 300 <= r.step <= 360][:10],
    }


def break_first_record(metrics: Path) -> None:
    with metrics.open("r+b") as f:
        f.write(b"\0" * 8)  # a zero timestamp: the valid prefix of the file is now empty


async def test_a_restarted_daemon_answers_from_the_sidecars_without_a_scan(
    tmp_path: Path,
) -> None:
    data = big_metrics(N, NAMES)
    metrics = make_experiment(tmp_path / "experiments", COMMIT, data, meta_bytes(COMMIT))
    async with in_process_daemons(tmp_path) as start:
        client = await (await start(storage=SIDECARS)).client()
        assert await answers(client) == expected(data)  # the first pass wrote the sidecars
    assert (metrics.parent / "index" / "checkpoint").is_file()
    break_first_record(metrics)
    async with in_process_daemons(tmp_path) as start:
        client = await (await start(storage=SIDECARS)).client()
        assert await answers(client) == expected(data)  # from the sidecars alone
    checkpoint = metrics.parent / "index" / "checkpoint"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1])  # a damaged checkpoint: not trusted
    # LIST's saved listing holds the count it found, and nothing a stat sees has changed
    # since (the first record was broken in place before the second daemon listed).
    (tmp_path / "experiments" / ".fetchml-listing").unlink()
    async with in_process_daemons(tmp_path) as start:
        client = await (await start(storage=SIDECARS)).client()
        got = await answers(client)
        assert (got["list"], got["get"], got["ends"], got["lttb"]) == ([0], 0, [], [])


async def test_appends_after_a_restart_extend_the_sidecars(tmp_path: Path) -> None:
    data = big_metrics(N, NAMES)
    metrics = make_experiment(tmp_path / "experiments", COMMIT, data, meta_bytes(COMMIT))
    more = [(N + i, float(i), "acc_") for i in range(500)] + [(7, 0.5, "late/name")]
    async with in_process_daemons(tmp_path) as start:
        client = await (await start(storage=SIDECARS)).client()
        await call_json(client, ListExperiments(key_hash=ADMIN))  # the first pass
        await log(client, commit_bytes(), more[:300])
    stamped = metrics.read_bytes()[len(data) :]
    break_first_record(metrics)  # covered by the checkpoint; the appended records are not
    async with in_process_daemons(tmp_path) as start:
        client = await (await start(storage=SIDECARS)).client()
        await log(client, commit_bytes(), more[300:])
        stamped = metrics.read_bytes()[len(data) :]  # with the daemon's timestamps
        assert await answers(client) == expected(data + stamped)
        late = QueryMetrics(key_hash=ADMIN, commit_id=commit_bytes(), name="late/name")
        assert [r.step for r in page_of(await client.call(late)).records] == [7]
    assert len(stamped) == len(b"".join(record(s, n) for s, _, n in more))


async def test_a_restarted_daemon_lists_from_its_saved_listing(tmp_path: Path) -> None:
    base = tmp_path / "experiments"
    commits = [f"{k:040x}" for k in range(5)]
    paths = [
        make_experiment(
            base,
            c,
            b"".join(record(s) for s in range(k + 1)),
            meta_bytes(c, timestamp=1764000000 - k),
        )
        for k, c in enumerate(commits)
    ]

    async def counts() -> list[int]:
        async with in_process_daemons(tmp_path) as start:
            client = await (await start()).client()
            listing = await call_json(client, ListExperiments(key_hash=ADMIN))
            return [item["metrics_count"] for item in listing]

    assert await counts() == [1, 2, 3, 4, 5]
    # Unseen by a stat (same inode, size and mtime): the saved count is used, the file is
    # not read. An append is seen, and read.
    st = paths[0].stat()
    paths[0].write_bytes(b"\0" * st.st_size)
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    with paths[1].open("ab") as f:
        f.write(record(99))
    assert await counts() == [1, 3, 3, 4, 5]
    (base / ".fetchml-listing").write_bytes(b"{not json")  # ignored: everything is read
    assert await counts() == [0, 3, 3, 4, 5]
