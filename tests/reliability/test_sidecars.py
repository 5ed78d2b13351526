"""Sidecars damaged, truncated and deleted at random (seeded, printed) between restarts
and appends: every answer still equals what a full scan of metrics.bin gives (records
decoded here; LTTB by the daemon's own function over the scanned points, which
tests/server/test_series.py checks against an independent one)."""

import os
import random
from pathlib import Path

import numpy as np

from fetchml.protocol.metrics import MetricRecord, decode_records, scan
from fetchml.protocol.requests import GetExperiment, ListExperiments, QueryMetrics
from fetchml.server.series import lttb
from tests.support.experiments import big_metrics, make_experiment, meta_bytes
from tests.support.inproc import in_process_daemons
from tests.support.keys import ADMIN
from tests.support.wire import RawClient, call_json, log, page_of

COMMIT = "7a" * 20
NAMES = ("loss", "grad", "acc_", "lr/group0")
ROUNDS = int(
    os.environ.get("FETCHML_SIDECAR_ROUNDS", "40" if os.environ.get("FETCHML_LONG") else "8")
)


def damage(index: Path, rng: random.Random) -> str:
    """One random harm to the sidecars; what it was."""
    files = sorted(p for p in index.iterdir()) if index.is_dir() else []
    choice = rng.choice(["delete all", "delete", "truncate", "flip", "garbage", "none"])
    if not files or choice == "none":
        return "none"
    if choice == "delete all":
        for p in files:
            p.unlink()
        index.rmdir()
        return choice
    target = rng.choice(files)
    size = target.stat().st_size
    if choice == "delete":
        target.unlink()
    elif choice == "truncate":
        os.truncate(target, rng.randrange(size + 1))
    elif choice == "flip" and size:
        data = bytearray(target.read_bytes())
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(size)] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    else:
        target.write_bytes(rng.randbytes(rng.randrange(1, 400)))
    return f"{choice} {target.name}"


def scanned(metrics: Path) -> list[MetricRecord]:
    data = metrics.read_bytes()
    return decode_records(data[: scan(data).end])


def page(
    records: list[MetricRecord], name: str, steps: tuple[int, int], after: int, limit: int
) -> tuple[int, list[MetricRecord]]:
    """QUERY_METRICS' page by a scan of the records: (next, records)."""
    out: list[MetricRecord] = []
    index = after
    while index < len(records) and len(out) < limit:
        r = records[index]
        if (not name or r.name == name) and steps[0] <= r.step <= steps[1]:
            out.append(r)
        index += 1
    return (index if index < len(records) else 0), out


def downsampled(
    records: list[MetricRecord], name: str, points: int, steps: tuple[int, int]
) -> list[MetricRecord]:
    by_name: dict[str, list[MetricRecord]] = {}  # names in order of first appearance
    for r in records:
        matching = by_name.setdefault(r.name, [])
        if steps[0] <= r.step <= steps[1]:
            matching.append(r)
    out = []
    for n, rs in by_name.items():
        if (not name or n == name) and rs:
            xs = np.array([r.step for r in rs], dtype=np.uint32)
            ys = np.array([r.value for r in rs], dtype=np.float64)
            out += [rs[i] for i in lttb(xs, ys, points)]
    return out


async def check(client: RawClient, metrics: Path, rng: random.Random) -> None:
    records = scanned(metrics)
    cid = bytes.fromhex(COMMIT)
    listing = await call_json(client, ListExperiments(key_hash=ADMIN))
    assert [i["metrics_count"] for i in listing] == [len(records)]
    doc = await call_json(client, GetExperiment(key_hash=ADMIN, commit_id=cid))
    assert doc["metrics_count"] == len(records)
    newest = [(m["step"], m["name"], m["value"]) for m in doc["metrics"][-50:]]
    assert newest == [(r.step, r.name, r.value) for r in records[-50:]]
    top = max(r.step for r in records)
    for _ in range(6):
        name = rng.choice(("", *NAMES))
        lo = rng.randrange(top)
        steps = rng.choice([(0, 0xFFFFFFFF), (lo, lo + rng.randrange(1, top))])
        after, limit = rng.randrange(len(records)), rng.randrange(1, 3000)
        req = QueryMetrics(
            key_hash=ADMIN,
            commit_id=cid,
            name=name,
            step_from=steps[0],
            step_to=steps[1],
            after=after,
            limit=limit,
        )
        got = page_of(await client.call(req))
        assert (got.next, list(got.records)) == page(records, name, steps, after, limit), req
        points = rng.choice([1, 2, 3, 50, 700])
        req = QueryMetrics(
            key_hash=ADMIN,
            commit_id=cid,
            name=name,
            step_from=steps[0],
            step_to=steps[1],
            max_points=points,
        )
        got = page_of(await client.call(req))
        assert list(got.records) == downsampled(records, name, points, steps), req


async def test_every_answer_equals_a_full_scan_whatever_happens_to_the_sidecars(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("FETCHML_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}, {ROUNDS} rounds")
    rng = random.Random(seed)
    names = tuple(n.encode() for n in ("loss", "grad", "acc_"))
    metrics = make_experiment(
        tmp_path / "experiments", COMMIT, big_metrics(30_000, names), meta_bytes(COMMIT)
    )
    index = metrics.parent / "index"
    step = 10_000
    for round_ in range(ROUNDS):
        async with in_process_daemons(tmp_path) as start:
            client = await (await start(storage={"index_bytes": 16 << 10})).client()
            await check(client, metrics, rng)
            for _ in range(rng.randrange(4)):
                batch = [
                    (step + i, rng.uniform(-5, 5), rng.choice(NAMES))
                    for i in range(rng.randrange(1, 900))
                ]
                step += len(batch)
                await log(client, bytes.fromhex(COMMIT), batch)
            await check(client, metrics, rng)
            assert (index / "checkpoint").is_file()  # rebuilt, and current
        harm = damage(index, rng)
        print(f"round {round_}: {len(scanned(metrics))} records, then {harm}")
    async with in_process_daemons(tmp_path) as start:
        client = await (await start(storage={"index_bytes": 16 << 10})).client()
        await check(client, metrics, rng)
