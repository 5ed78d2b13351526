"""ExperimentStore on a real tree in tmp_path: layout, Go bytes, listing, prune,
group commit and chunked reads."""

import asyncio
import contextlib
import math
import os
import stat
import threading
import time
from pathlib import Path

import anyio
import pytest

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.metrics import decode_records, encode_record, scan
from fetchml.protocol.records import Metadata
from fetchml.server.errors import AlreadyExists, NotFound, StorageFault
from fetchml.server.experiment import Phase
from fetchml.server.files import MAX_TORN_BYTES
from fetchml.server.storage import MAX_FLUSH_BYTES, Durability, ExperimentStore
from tests.support.experiments import GoTree

TS = 1795735109

# PROTOCOL.md section 1 examples, verbatim.
META_HEX = (
    "0100000000692481002830313233343536373839616263646566303132333435363738396162636465663031"
    "323334353637117265736e657435302d626173656c696e6505616c696365"
)
LOSS_HEX = "000000006b08be45000000003ff0000000000000046c6f7373"
EXAMPLE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def commit(n: int) -> str:
    return f"{n:040x}"


def meta(c: str, timestamp: int = 1764000000, job: str = "job", user: str = "alice") -> Metadata:
    return Metadata(commit_id=c, timestamp=timestamp, job_name=job, user=user)


def record(name: str = "loss", value: float = 1.0, step: int = 0, timestamp: int = TS) -> bytes:
    return encode_record(timestamp, step, value, name.encode())


def records(prefix: str, n: int, step0: int = 0) -> list[bytes]:
    """n records whose names vary in length, so offsets are irregular."""
    return [record(f"{prefix}{'x' * (i % 13)}", float(i), step0 + i) for i in range(n)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def metrics_bytes(base: Path, c: str) -> bytes:
    return (base / c / "metrics.bin").read_bytes()


def json_value(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


# -- layout and modes ------------------------------------------------------------


async def test_create_layout_and_modes(tmp_path: Path) -> None:
    base = tmp_path / "experiments"
    c = commit(1)
    async with ExperimentStore(base) as store:
        await store.create(meta(c))
        directory = base / c
        assert mode(base) == 0o750
        assert mode(directory) == 0o750
        assert mode(directory / "files") == 0o750
        assert list((directory / "files").iterdir()) == []
        assert mode(directory / "meta.bin") == 0o600
        assert not (directory / "metrics.bin").exists()
        assert sorted(p.name for p in base.iterdir()) == [c]  # no temp directory left
        assert sorted(p.name for p in directory.iterdir()) == ["files", "meta.bin"]

        assert await store.append(c, record(), 1) == 0
        assert mode(directory / "metrics.bin") == 0o600
        assert store.exists(c)
        assert store.metadata(c) == meta(c)


async def test_create_existing_is_already_exists(tmp_path: Path) -> None:
    c = commit(2)
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(c, job="first"))
        with pytest.raises(AlreadyExists) as info:
            await store.create(meta(c, job="second"))
        assert info.value.code == ErrorCode.RESOURCE_ALREADY_EXISTS
        assert store.metadata(c) == meta(c, job="first")

    (tmp_path / commit(3)).mkdir()  # made by someone else
    async with ExperimentStore(tmp_path) as store:
        with pytest.raises(AlreadyExists):
            await store.create(meta(commit(3)))
        assert store.metadata(commit(2)) == meta(c, job="first")


@pytest.mark.parametrize("bad", ["A" * 40, "a" * 39, "a" * 41, "../" + "a" * 37, "g" * 40])
async def test_invalid_commit_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    async with ExperimentStore(tmp_path) as store:
        with pytest.raises(NotFound):
            await store.create(meta(bad))
        with pytest.raises(NotFound):
            store.exists(bad)
    assert list(tmp_path.iterdir()) == []


async def test_list_counts_only_lowercase_hex_names(tmp_path: Path) -> None:
    good = [commit(5), "abcdef" + "0" * 34]
    async with ExperimentStore(tmp_path) as store:
        for c in good:
            await store.create(meta(c))
    (tmp_path / "README").mkdir()
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / ("ABCDEF" + "0" * 34)).mkdir()
    (tmp_path / ("a" * 39)).mkdir()
    (tmp_path / ("a" * 41)).mkdir()
    (tmp_path / ("e" * 40)).write_bytes(b"a file named like a commit: listed, damaged")
    async with ExperimentStore(tmp_path) as store:
        assert store.commits() == sorted([*good, "e" * 40])
        listed = {i.commit: i.damaged for i in await store.list_experiments()}
    assert listed == {**dict.fromkeys(good), "e" * 40: "experiment directory is a regular file"}


async def test_list_experiments_order(tmp_path: Path) -> None:
    newest, tie_low, tie_high, oldest = commit(0x30), commit(0x10), commit(0x20), commit(0x05)
    broken_low, broken_high = commit(0x01), commit(0x40)
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(oldest, 1_700_000_000))
        await store.create(meta(tie_high, 1_750_000_000))
        await store.create(meta(tie_low, 1_750_000_000))
        await store.create(meta(newest, 1_760_000_000))
        for c in (broken_high, broken_low):
            await store.create(meta(c, 1_800_000_000))
        await store.append(tie_low, record() * 3, 3)
        await store.append(broken_high, record(), 1)
    (tmp_path / broken_high / "meta.bin").write_bytes(b"\x02" + bytes(20))  # bad version
    (tmp_path / broken_low / "meta.bin").unlink()  # missing

    async with ExperimentStore(tmp_path) as store:
        infos = await store.list_experiments()
    assert [(i.commit, i.meta is None, i.metrics_count) for i in infos] == [
        (newest, False, 0),
        (tie_low, False, 3),
        (tie_high, False, 0),
        (oldest, False, 0),
        (broken_low, True, 0),
        (broken_high, True, 1),
    ]
    assert infos[0].meta == meta(newest, 1_760_000_000)


# -- the Go byte layout ------------------------------------------------------------


async def test_meta_and_metrics_bytes_match_go(tmp_path: Path) -> None:
    async with ExperimentStore(tmp_path) as store:
        await store.create(
            Metadata(
                commit_id=EXAMPLE_COMMIT,
                timestamp=1764000000,
                job_name="resnet50-baseline",
                user="alice",
            )
        )
        assert await store.append(EXAMPLE_COMMIT, encode_record(TS, 0, 1.0, b"loss"), 1) == 0
    assert (tmp_path / EXAMPLE_COMMIT / "meta.bin").read_bytes() == bytes.fromhex(META_HEX)
    assert metrics_bytes(tmp_path, EXAMPLE_COMMIT) == bytes.fromhex(LOSS_HEX)


async def test_write_metadata_replaces_whole_file(tmp_path: Path) -> None:
    c = commit(7)
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(c))
        await store.write_metadata(meta(c, job="renamed", user="bob"))
    directory = tmp_path / c
    assert sorted(p.name for p in directory.iterdir()) == ["files", "meta.bin"]
    assert mode(directory / "meta.bin") == 0o600
    async with ExperimentStore(tmp_path) as store:
        assert store.metadata(c) == meta(c, job="renamed", user="bob")


async def test_reads_a_go_tree(go_tree: GoTree) -> None:
    async with ExperimentStore(go_tree.base) as store:
        infos = await store.list_experiments()
        assert [i.commit for i in infos] == list(go_tree.expected)
        for info in infos:
            want = go_tree.expected[info.commit]
            assert (info.metrics_count, info.damaged) == (want["metrics_count"], want["damaged"])
            if info.meta is None:
                assert want["metadata"]["timestamp"] is None
            else:
                assert want["metadata"] == {
                    "commit_id": info.meta.commit_id,
                    "timestamp": info.meta.timestamp,
                    "job_name": info.meta.job_name,
                    "user": info.meta.user,
                }
            if not os.path.isdir(go_tree.base / info.commit):  # damaged: never opened
                with pytest.raises(StorageFault, match=want["damaged"]):
                    await store.read(info.commit, 0)
                continue
            got = [
                {
                    "name": r.name,
                    "value": json_value(r.value),
                    "step": r.step,
                    "timestamp": r.timestamp,
                }
                for r in decode_records((await store.read(info.commit, 0)).data)
            ]
            assert got == want["metrics"]


async def test_appends_continue_a_go_file(go_tree: GoTree) -> None:
    """Indices continue after Go's records, empty names included; a torn tail is cut."""
    a, b = EXAMPLE_COMMIT, "b" * 40
    before_a = metrics_bytes(go_tree.base, a)
    before_b = metrics_bytes(go_tree.base, b)
    async with ExperimentStore(go_tree.base) as store:
        assert await store.append(a, record("after-go"), 1) == 9
        assert await store.append(b, record("after-go"), 1) == 2
    assert metrics_bytes(go_tree.base, a) == before_a + record("after-go")
    valid_b = len(before_b) - 30 - 21  # the trailing empty-name record and the zeros go
    assert metrics_bytes(go_tree.base, b) == before_b[:valid_b] + record("after-go")


# -- prune -----------------------------------------------------------------------------

NOW = 1_800_000_000
DAY = 86400


async def make_tree(base: Path, stamps: dict[str, int | None]) -> None:
    """Experiments with the given timestamps; None makes meta.bin unreadable."""
    async with ExperimentStore(base) as store:
        for c, ts in stamps.items():
            await store.create(meta(c, NOW if ts is None else ts))
            await store.append(c, record(), 1)
    for c, ts in stamps.items():
        if ts is None:
            (base / c / "meta.bin").write_bytes(b"\x01short")


@pytest.mark.parametrize(
    ("keep", "victims"),
    [
        (0, ["a1", "a2", "b", "c1", "c2", "d"]),
        (1, ["a1", "a2", "c1", "c2", "d"]),  # b is newest
        (2, ["a2", "c1", "c2", "d"]),  # a1 wins the tie with a2 (commit ascending)
        (3, ["c1", "c2", "d"]),
        (4, ["c2", "d"]),
        (6, []),
        (100, []),
    ],
)
async def test_prune_keep_newest(tmp_path: Path, keep: int, victims: list[str]) -> None:
    names = {
        "a1": commit(0xA1),
        "a2": commit(0xA2),
        "b": commit(0xB),
        "c1": commit(0xC1),
        "c2": commit(0xC2),
        "d": commit(0xD),
        "x": commit(0xEE),
    }
    await make_tree(
        tmp_path,
        {
            names["a1"]: NOW - 10,
            names["a2"]: NOW - 10,
            names["b"]: NOW,
            names["c1"]: NOW - 20,
            names["c2"]: NOW - 20,
            names["d"]: NOW - 30,
            names["x"]: None,  # unreadable: never pruned, not counted among the kept
        },
    )
    removed = sorted(names[v] for v in victims)
    async with ExperimentStore(tmp_path) as store:
        assert await store.prune("keep", keep, now=NOW) == removed
        for c in names.values():
            assert store.exists(c) is (c not in removed)
            assert (tmp_path / c).exists() is (c not in removed)
        listed = [i.commit for i in await store.list_experiments()]
        assert sorted(listed) == sorted(set(names.values()) - set(removed))
        assert listed[-1] == names["x"]


@pytest.mark.parametrize(
    ("days", "victims"),
    [
        (0, ["exact1", "older1", "old10"]),  # only the experiment at NOW itself stays
        (1, ["older1", "old10"]),  # exactly one day old is not strictly older
        (9, ["old10"]),
        (10, []),
        (3650, []),
    ],
)
async def test_prune_older_than(tmp_path: Path, days: int, victims: list[str]) -> None:
    names = {
        "now": commit(1),
        "exact1": commit(2),
        "older1": commit(3),
        "old10": commit(4),
        "broken": commit(5),
    }
    await make_tree(
        tmp_path,
        {
            names["now"]: NOW,
            names["exact1"]: NOW - DAY,
            names["older1"]: NOW - DAY - 1,
            names["old10"]: NOW - 10 * DAY + 1,
            names["broken"]: None,
        },
    )
    removed = sorted(names[v] for v in victims)
    async with ExperimentStore(tmp_path) as store:
        assert await store.prune("older", days, now=NOW) == removed
        assert sorted(store.commits()) == sorted(set(names.values()) - set(removed))
        for c in removed:
            assert not store.exists(c)
            assert not (tmp_path / c).exists()


async def test_pruned_experiment_is_gone_even_while_open(tmp_path: Path) -> None:
    old, new = commit(1), commit(2)
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(old, NOW - 5 * DAY))
        await store.create(meta(new, NOW))
        await store.append(old, record(), 1)  # metrics.bin is open for appending
        assert await store.read(old, 0) == (record(), 0, 1, 1)
        assert await store.prune("older", 1, now=NOW) == [old]
        assert not store.exists(old)
        assert [i.commit for i in await store.list_experiments()] == [new]
        with pytest.raises(NotFound):
            store.metadata(old)
        with pytest.raises(NotFound):
            await store.append(old, record(), 1)
        with pytest.raises(NotFound):
            await store.count(old)
        assert not (tmp_path / old).exists()
        # the commit can be created again from scratch
        await store.create(meta(old, NOW))
        assert await store.append(old, record("again"), 1) == 0
    assert metrics_bytes(tmp_path, old) == record("again")


# -- group commit ----------------------------------------------------------------------


def step_of(owner: int, j: int) -> int:
    return owner * 1000 + j


def batch(owner: int, size: int) -> bytes:
    return b"".join(record(f"m{owner}", owner + j / 10, step_of(owner, j)) for j in range(size))


def check_file(data: bytes, sizes: dict[int, int], firsts: dict[int, int]) -> None:
    """Every append present exactly once, contiguous, in order, at its returned index."""
    assert scan(data)[:2] == (len(data), sum(sizes.values()))
    decoded = decode_records(data)
    assert len(decoded) == sum(sizes.values())
    for owner, size in sizes.items():
        first = firsts[owner]
        got = decoded[first : first + size]
        assert [r.step for r in got] == [step_of(owner, j) for j in range(size)]
        assert {r.name for r in got} == {f"m{owner}"}


@pytest.mark.parametrize("durability", ["write", "fsync"])
async def test_group_commit_one_experiment(tmp_path: Path, durability: Durability) -> None:
    c = commit(1)
    sizes = {owner: 1 + (owner * 7) % 50 for owner in range(400)}
    flushes: list[int] = []
    async with ExperimentStore(tmp_path, durability=durability) as store:
        store.flush_hooks.append(lambda n, _seconds: flushes.append(n))
        await store.create(meta(c))
        firsts = await asyncio.gather(
            *(store.append(c, batch(owner, size), size) for owner, size in sizes.items())
        )
        assert await store.count(c) == sum(sizes.values())
    check_file(metrics_bytes(tmp_path, c), sizes, dict(zip(sizes, firsts, strict=True)))
    assert sum(flushes) == sum(sizes.values())
    assert len(flushes) <= len(sizes) // 20


async def test_group_commit_many_experiments(tmp_path: Path) -> None:
    commits = [commit(n) for n in range(1, 6)]
    sizes = {owner: 1 + owner % 17 for owner in range(500)}
    target = {owner: commits[owner % len(commits)] for owner in sizes}
    flushes: list[int] = []

    async def one(owner: int) -> int:
        return await store.append(target[owner], batch(owner, sizes[owner]), sizes[owner])

    async with ExperimentStore(tmp_path) as store:
        store.flush_hooks.append(lambda n, _seconds: flushes.append(n))
        for c in commits:
            await store.create(meta(c))
        firsts = dict(zip(sizes, await asyncio.gather(*(one(o) for o in sizes)), strict=True))
        # and a second wave while the files are open
        more = {owner: 1 + owner % 5 for owner in range(500, 800)}
        sizes.update(more)
        target.update({owner: commits[owner % len(commits)] for owner in more})
        firsts.update(zip(more, await asyncio.gather(*(one(o) for o in more)), strict=True))
    for c in commits:
        mine = [owner for owner in sizes if target[owner] == c]
        check_file(
            metrics_bytes(tmp_path, c),
            {o: sizes[o] for o in mine},
            {o: firsts[o] for o in mine},
        )
    assert sum(flushes) == sum(sizes.values())
    assert len(flushes) <= len(sizes) // 20


async def test_submit_before_any_flush_is_one_write(tmp_path: Path) -> None:
    c = commit(1)
    flushes: list[int] = []
    async with ExperimentStore(tmp_path) as store:
        store.flush_hooks.append(lambda n, _seconds: flushes.append(n))
        await store.create(meta(c))
        futures = [store.submit(c, batch(owner, 3), 3) for owner in range(200)]
        assert await asyncio.gather(*futures) == list(range(0, 600, 3))
    assert flushes == [600]
    check_file(
        metrics_bytes(tmp_path, c), dict.fromkeys(range(200), 3), {o: 3 * o for o in range(200)}
    )


async def test_flush_never_writes_more_than_8_mib(tmp_path: Path) -> None:
    c = commit(1)
    big = record("y" * 255)
    per_request = (1 << 20) // len(big)  # about 1 MiB per request
    written: list[int] = []
    async with ExperimentStore(tmp_path) as store:
        store.hooks.append(lambda _c, _first, data, _n: written.append(len(data)))
        await store.create(meta(c))
        futures = [store.submit(c, big * per_request, per_request) for _ in range(20)]
        assert await asyncio.gather(*futures) == [i * per_request for i in range(20)]
    assert sum(written) == 20 * per_request * len(big)
    assert len(written) >= 3
    assert max(written) <= MAX_FLUSH_BYTES


async def test_commit_hooks_see_indices_and_bytes(tmp_path: Path) -> None:
    c = commit(1)
    seen: list[tuple[str, int, bytes, int]] = []
    async with ExperimentStore(tmp_path) as store:
        store.hooks.append(lambda *args: seen.append(args))
        await store.create(meta(c))
        await store.append(c, batch(1, 2), 2)
        await store.append(c, batch(2, 3), 3)
    assert seen == [(c, 0, batch(1, 2), 2), (c, 2, batch(2, 3), 3)]


async def test_flush_waits_for_a_write_in_progress(tmp_path: Path) -> None:
    """store.flush(): "Wait until everything submitted so far is written"."""
    c = commit(1)
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(c))
        future = store.submit(c, record(), 1)
        await asyncio.sleep(0)  # not a sleep: lets the flusher take the batch and start writing
        await store.flush()
        done = future.done()
        await future
    assert done, "flush() returned while the batch it should wait for was still being written"


def open_metrics_files(base: Path) -> int:
    """Descriptors of this process open on a metrics.bin under `base` (Linux /proc)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sum(1 for link in links if link.startswith(str(base)) and link.endswith("metrics.bin"))


async def test_open_files_are_bounded(tmp_path: Path) -> None:
    commits = [commit(n) for n in range(1, 9)]
    expected: dict[str, list[bytes]] = {c: [] for c in commits}
    async with ExperimentStore(tmp_path, max_open_files=2) as store:
        for c in commits:
            await store.create(meta(c))
        for wave in range(3):  # one at a time: each new experiment evicts an idle one
            for n, c in enumerate(commits):
                data = batch(wave * 10 + n, 2)
                assert await store.append(c, data, 2) == len(expected[c])
                expected[c] += [data[: len(data) // 2], data[len(data) // 2 :]]
                assert open_metrics_files(tmp_path) <= 2
        # all at once: busy experiments stay open while busy, but not once idle again
        firsts = await asyncio.gather(*(store.append(c, record(c[-1:]), 1) for c in commits))
        assert firsts == [6] * len(commits)
        for c in commits:
            expected[c].append(record(c[-1:]))
            assert (await store.read(c, 0)).data == b"".join(expected[c])
        assert await store.append(commits[0], record("after"), 1) == 7
        expected[commits[0]].append(record("after"))
        assert open_metrics_files(tmp_path) <= 2, "idle experiments beyond max_open_files stay open"
    assert open_metrics_files(tmp_path) == 0
    for c in commits:
        assert metrics_bytes(tmp_path, c) == b"".join(expected[c])


async def test_two_stores_on_one_tree_interleave_whole_requests(tmp_path: Path) -> None:
    c = commit(1)
    async with ExperimentStore(tmp_path) as one, ExperimentStore(tmp_path) as two:
        await one.create(meta(c))
        assert await one.append(c, batch(1, 2), 2) == 0
        assert await two.append(c, batch(2, 3), 3) == 2
        assert await one.append(c, batch(3, 1), 1) == 5
        assert await one.count(c) == 6
        assert (await one.read(c, 2)).data == batch(2, 3) + batch(3, 1)
    assert metrics_bytes(tmp_path, c) == batch(1, 2) + batch(2, 3) + batch(3, 1)


# -- the file's state and lifecycle ----------------------------------------------------


async def test_phase_follows_the_experiment_lifecycle(tmp_path: Path) -> None:
    c, bad = commit(1), commit(2)
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(c))
        assert store.phase(c) is Phase.UNSCANNED
        assert await store.count(c) == 0
        assert store.phase(c) is Phase.KNOWN
        await store.append(c, record(), 1)
        assert store.phase(c) is Phase.OPEN

        await store.create(meta(bad))
        await store.append(bad, record(), 1)
        with (tmp_path / bad / "metrics.bin").open("ab") as f:  # behind the open descriptor
            f.write(b"\xff" * (MAX_TORN_BYTES + 1))
        with pytest.raises(StorageFault, match="metrics file corrupt"):
            await store.append(bad, record(), 1)
        assert store.phase(bad) is Phase.CORRUPT
        assert open_metrics_files(tmp_path) == 1  # the corrupt file is not held open
        assert await store.count(bad) == 1

        held = store.held(c)
        assert held is not None
        assert await store.prune("keep", 0) == [c, bad]
        assert held.phase is Phase.REMOVED and held.fd is None
        assert store.phase(c) is None
        assert open_metrics_files(tmp_path) == 0


async def test_the_event_loop_sees_a_worker_step_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write in a worker thread first finds another writer's record behind it. Until the
    step ends, the event loop still sees the state from before it; then all of the new one."""
    c = commit(1)
    entered, release = threading.Event(), threading.Event()
    real_sync = os.fdatasync

    def slow_sync(fd: int) -> None:
        entered.set()
        release.wait(10)
        real_sync(fd)

    async with ExperimentStore(tmp_path, durability="fsync") as store:
        await store.create(meta(c))
        assert await store.append(c, record("a"), 1) == 0
        with (tmp_path / c / "metrics.bin").open("ab") as f:
            f.write(record("other"))
        monkeypatch.setattr(os, "fdatasync", slow_sync)
        future = store.submit(c, record("b"), 1)
        assert await anyio.to_thread.run_sync(entered.wait, 10)
        try:
            during = await store.count(c), (await store.read(c, 0)).data
        finally:
            release.set()
        assert await future == 2
        assert during == (1, record("a"))
        assert await store.count(c) == 3
        assert (await store.read(c, 0)).data == record("a") + record("other") + record("b")


async def test_leaving_the_store_closes_its_files_even_when_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = commit(1)
    entered = threading.Event()
    real_sync = os.fdatasync

    def slow_sync(fd: int) -> None:
        entered.set()
        time.sleep(0.05)
        real_sync(fd)

    with anyio.CancelScope() as scope:
        async with ExperimentStore(tmp_path, durability="fsync") as store:
            await store.create(meta(c))
            await store.append(c, record("a"), 1)
            assert open_metrics_files(tmp_path) == 1
            monkeypatch.setattr(os, "fdatasync", slow_sync)
            store.submit(c, record("b"), 1)
            assert await anyio.to_thread.run_sync(entered.wait, 10)
            scope.cancel()  # while the store waits for that flush on the way out
    assert scope.cancelled_caught
    assert open_metrics_files(tmp_path) == 0


# -- chunked reads ----------------------------------------------------------------------


def check_chunks(chunks: list[tuple[int, bytes, int, int]], recs: list[bytes], limit: int) -> None:
    for start, data, n, total in chunks:
        assert total == len(recs)
        assert n >= 1
        assert data == b"".join(recs[start : start + n])
        assert len(data) <= limit or n == 1
        if start + n < len(recs):  # as many records as fit
            assert len(data) + len(recs[start + n]) > limit


async def read_every_start(
    store: ExperimentStore, c: str, n: int, limit: int
) -> list[tuple[int, bytes, int, int]]:
    out = []
    for start in range(n):
        chunk = await store.read(c, start, limit)
        assert chunk.start == start
        out.append((start, chunk.data, chunk.records, chunk.total))
    return out


@pytest.mark.parametrize("limit", [300, 301, 1000, 4096, 1 << 20])
async def test_read_chunks_from_every_start(tmp_path: Path, limit: int) -> None:
    c = commit(1)
    recs = [*records("a", 120), record("z" * 255), *records("b", 60)]
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(c))
        await store.append(c, b"".join(recs[:100]), 100)
        await store.append(c, b"".join(recs[100:]), len(recs) - 100)
        check_chunks(await read_every_start(store, c, len(recs), limit), recs, limit)

        more = records("c", 90, 1000)
        await store.append(c, b"".join(more), len(more))
        recs += more
        check_chunks(await read_every_start(store, c, len(recs), limit), recs, limit)

        for start in (len(recs), len(recs) + 1, 10**9):
            chunk = await store.read(c, start, limit)
            assert (chunk.data, chunk.records, chunk.total) == (b"", 0, len(recs))


async def test_read_chunks_of_a_reader_store_follow_the_writer(tmp_path: Path) -> None:
    """A store that never appends sees another writer's records as the file grows."""
    c = commit(1)
    recs = records("a", 50)
    async with ExperimentStore(tmp_path) as writer, ExperimentStore(tmp_path) as reader:
        await writer.create(meta(c))
        with pytest.raises(NotFound):
            await reader.read(commit(2), 0)
        assert await reader.read(c, 0) == (b"", 0, 0, 0)
        await writer.append(c, b"".join(recs), len(recs))
        check_chunks(await read_every_start(reader, c, len(recs), 500), recs, 500)
        more = records("b", 40, 100)
        await writer.append(c, b"".join(more), len(more))
        recs += more
        assert await reader.count(c) == len(recs)
        check_chunks(await read_every_start(reader, c, len(recs), 500), recs, 500)
        assert await reader.read_all(c) == b"".join(recs)


async def test_read_chunk_with_an_oversized_record_is_that_record(tmp_path: Path) -> None:
    c = commit(1)
    recs = [record("z" * 255), record("a"), record("b")]
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(c))
        await store.append(c, b"".join(recs), 3)
        chunk = await store.read(c, 0, 1)
        assert (chunk.data, chunk.records) == (recs[0], 1)


@pytest.mark.parametrize("limit", [1, 30, 100, 275])
async def test_read_chunks_respect_a_small_max_bytes(tmp_path: Path, limit: int) -> None:
    """At most max_bytes, or one record when a single one is larger."""
    c = commit(1)
    recs = [record("loss", float(i), i) for i in range(40)]  # 25 bytes each
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta(c))
        await store.append(c, b"".join(recs), len(recs))
        check_chunks(await read_every_start(store, c, len(recs), limit), recs, limit)
