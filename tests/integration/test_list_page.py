"""A warm LIST_EXPERIMENTS looks at the directories of what it counts (its page), not at
every experiment's, and is still what the files say after experiments are added,
removed, appended to and given new metadata, by this daemon and by another process (a
cluster's other node, or the test writing files), in standalone and cluster mode."""

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from fetchml.protocol.enums import PruneType
from fetchml.protocol.records import Metadata, decode_metadata, encode_metadata
from fetchml.protocol.requests import CreateExperiment, ListExperiments, Prune
from fetchml.protocol.responses import Data, Success
from fetchml.server import lister
from tests.support.experiments import make_experiment, record
from tests.support.inproc import DaemonFactory
from tests.support.keys import ADMIN
from tests.support.redis import RedisServer
from tests.support.watch import batch, write
from tests.support.wire import RawClient, call_json

EXPERIMENTS = lister.LIST_CHUNK + 188
"""More than the first counting step; long job names make the page about 300 items."""
STAMP = 1764000000
PAGE = {"max_message_bytes": 128 << 10}


def cid(n: int) -> str:
    return f"{n:040x}"


def meta(n: int, timestamp: int) -> bytes:
    return encode_metadata(
        Metadata(commit_id=cid(n), timestamp=timestamp, job_name="j" * 250, user="admin")
    )


def populate(base: Path) -> None:
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, EXPERIMENTS + 1):
        make_experiment(base, cid(n), record(0), meta(n, STAMP + n))


def truth(base: Path) -> list[tuple[str, int]]:
    """The listing's order from the files (all readable here) and each one's count (every
    record here has the same size)."""
    stamps = []
    for commit in commits(base):
        stamp = decode_metadata((base / commit / "meta.bin").read_bytes()).timestamp
        stamps.append((-stamp, commit))
    order = [commit for _, commit in sorted(stamps)]
    return [(c, size(base / c / "metrics.bin") // len(record(0))) for c in order]


def commits(base: Path) -> list[str]:
    return [name for name in os.listdir(base) if re.fullmatch("[0-9a-f]{40}", name)]


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def listed(client: RawClient) -> list[tuple[str, int]]:
    items: list[dict[str, Any]] = await call_json(client, ListExperiments(key_hash=ADMIN))
    return [(item["commit_id"], item["metrics_count"]) for item in items]


async def check(client: RawClient, base: Path) -> list[tuple[str, int]]:
    got = await listed(client)
    assert 200 < len(got) < lister.LIST_CHUNK
    assert got == truth(base)[: len(got)]
    return got


def rename_meta(base: Path, n: int, timestamp: int) -> None:
    (base / cid(n) / "meta.tmp").write_bytes(meta(n, timestamp))
    os.rename(base / cid(n) / "meta.tmp", base / cid(n) / "meta.bin")


def count_directory_stats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The experiment directories stat'ed from now on (by their 40-hex name)."""
    seen: list[str] = []
    stat = os.stat

    def counting(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if isinstance(path, str) and len(path) == 40 and "/" not in path:
            seen.append(path)
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    return seen


@pytest.mark.parametrize("mode", ["standalone", "cluster"])
async def test_listing_follows_changes(
    start_daemon: DaemonFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    mode: str,
) -> None:
    """No look at every directory happens (SWEEP_S is an hour) until the last step,
    where it finds a new meta.bin past the page."""
    monkeypatch.setattr(lister, "SWEEP_S", 3600.0, raising=False)
    base = tmp_path / "shared"
    populate(base)
    cluster = {}
    if mode == "cluster":
        redis: RedisServer = request.getfixturevalue("redis_server")
        cluster = {"redis_url": redis.url}
    nodes = [
        await start_daemon(
            cluster=cluster,
            server=PAGE,
            storage={"base_path": str(base), "jobs_db": str(tmp_path / f"jobs-{i}.sqlite3")},
        )
        for i in range(2 if cluster else 1)
    ]
    client = await nodes[0].client()
    other = await nodes[-1].client() if cluster else None
    first = await check(client, base)
    stat = os.stat
    stats = count_directory_stats(monkeypatch)
    assert await listed(client) == first
    monkeypatch.setattr(os, "stat", stat)
    print(f"warm listing: {len(stats)} directory stats for {EXPERIMENTS} experiments")
    assert len(stats) <= lister.LIST_CHUNK  # those it counted
    top = [int(c, 16) for c, _ in first]

    async def append(by: RawClient | None, n: int, start: int) -> None:
        if by is None:  # another process
            with open(base / cid(n) / "metrics.bin", "ab") as f:
                f.write(record(start) + record(start + 1))
        else:
            await write(by, batch(bytes.fromhex(cid(n)), start, 2))

    await append(other, top[3], 1)  # another process appends
    await check(client, base)
    await append(client, top[4], 1)  # this daemon appends, then another process
    await check(client, base)
    await append(other, top[4], 3)
    await check(client, base)
    if other is None:  # another process creates one, and removes one of the page
        make_experiment(base, cid(9000), record(0), meta(9000, STAMP + 5000))
        shutil.rmtree(base / cid(top[5]))
    else:
        req = CreateExperiment(key_hash=ADMIN, commit_id=bytes.fromhex(cid(9000)), job_name="n")
        assert isinstance(await other.call(req), Success)
        make_experiment(base, cid(9001), record(0), meta(9001, STAMP + 5001))
        shutil.rmtree(base / cid(top[5]))
    got = await check(client, base)
    assert got[0][0] in (cid(9000), cid(9001)) and cid(top[5]) not in dict(got)
    req = CreateExperiment(key_hash=ADMIN, commit_id=bytes.fromhex(cid(9100)), job_name="m")
    assert isinstance(await client.call(req), Success)  # this daemon creates one
    await append(client, 9100, 0)
    assert (cid(9100), 2) in (await check(client, base))[:2]  # ties: commit ascending
    rename_meta(base, top[6], STAMP)  # one of the page becomes the oldest
    assert cid(top[6]) not in dict(await check(client, base))
    prune = Prune(key_hash=ADMIN, prune_type=PruneType.KEEP_NEWEST, value=EXPERIMENTS - 20)
    assert isinstance(await (other or client).call(prune), Data)  # the oldest go
    assert not (base / cid(top[6])).exists()
    await check(client, base)
    prune = Prune(key_hash=ADMIN, prune_type=PruneType.KEEP_NEWEST, value=EXPERIMENTS - 40)
    assert isinstance(await client.call(prune), Data)
    await check(client, base)
    oldest = min(int(c, 16) for c in commits(base))
    rename_meta(base, oldest, 2_000_000_000)  # far past the page, it becomes the newest
    monkeypatch.setattr(lister, "SWEEP_S", 0.0)
    assert (await check(client, base))[0][0] == cid(oldest)
    store = nodes[0].app.ctx.store

    async def settle() -> None:
        """No save of the listing under way, and the data directory's mtime as before
        (old enough to be trusted): the next listing reuses the list of experiments."""
        while store.lister._saving:
            await asyncio.sleep(0.01)
        os.utime(base, ns=(1 << 60, 1 << 60))

    for _ in range(2):
        await check(client, base)
        await settle()
    assert store.lister._forget_seen()  # what the cache budget does under pressure
    monkeypatch.setattr(lister, "SWEEP_S", 3600.0)
    await check(client, base)
    await settle()
    everything = [(i.commit, i.metrics_count) for i in await store.list_experiments()]
    assert everything == truth(base)
