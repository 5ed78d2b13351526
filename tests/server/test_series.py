"""Per-name columns, LTTB, and the one cache budget they share with the offset indexes."""

import math
import random
from pathlib import Path

import numpy as np
import pytest

from fetchml.protocol.metrics import decode_records, encode_record
from fetchml.protocol.records import Metadata
from fetchml.server.budget import CacheBudget
from fetchml.server.series import SeriesCache, lttb
from fetchml.server.storage import ExperimentStore
from tests.support.lttb import reference_lttb

TS = 1795735109


def run_lttb(ys: list[float], threshold: int) -> list[int]:
    return lttb(np.arange(len(ys), dtype=np.uint32), np.array(ys, dtype=np.float64), threshold)


# -- LTTB --------------------------------------------------------------------------------------


def test_lttb_known_indices() -> None:
    # every = 3: buckets [1, 4) and [4, 7), then the last point. In the first, the point
    # making the largest triangle with (0, 0) and the next bucket's mean (5, -2/3) is 2;
    # in the second, with (2, 5) and the last point (7, 0), it is 5.
    assert run_lttb([0, 1, 5, 2, 0, -3, 1, 0], 4) == [0, 2, 5, 7]
    assert run_lttb([0, 0, 0, 5, 0, 0, 0, 0, 0, 0], 3) == [0, 3, 9]


def test_lttb_measures_x_in_steps_not_positions() -> None:
    # One bucket, points 1..5, between (0, 0) and the last point (20, 10). Twice the area
    # of the triangle through point j is |10 x_j - 20 y_j|: 10, 160, 100, 110, 80 with the
    # steps as x, so point 2; with positions as x (last point at 6) it would be
    # |10 j - 6 y_j|: 10, 34, 30, 40, 38, so point 4.
    steps = np.array([0, 1, 2, 10, 11, 12, 20], dtype=np.uint32)
    ys = np.array([0, 0, 9, 0, 0, 2, 10], dtype=np.float64)
    assert lttb(steps, ys, 3) == [0, 2, 6]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_lttb_keeps_everything_when_the_threshold_is_not_below_n(n: int) -> None:
    assert run_lttb([float(i) for i in range(n)], n) == list(range(n))
    assert run_lttb([float(i) for i in range(n)], n + 10) == list(range(n))


def test_lttb_one_or_two_points_are_the_first_and_the_last() -> None:
    assert run_lttb([3.0, 1.0, 4.0, 1.0, 5.0], 1) == [0]
    assert run_lttb([3.0, 1.0, 4.0, 1.0, 5.0], 2) == [0, 4]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("buckets", ["small", "large"])  # searched in Python, or with numpy
def test_lttb_matches_the_reference(seed: int, buckets: str) -> None:
    rng = random.Random(seed)
    n = rng.randrange(200, 3000)
    steps = sorted(rng.sample(range(10 * n), n))
    ys = [rng.gauss(0, 1) for _ in range(n)]
    threshold = rng.randrange(n // 8, n) if buckets == "small" else rng.randrange(3, n // 40)
    got = lttb(np.array(steps, dtype=np.uint32), np.array(ys), threshold)
    assert got == reference_lttb(list(zip(steps, ys, strict=True)), threshold)
    assert got[0] == 0 and got[-1] == n - 1 and len(got) == threshold


@pytest.mark.parametrize("n", [10, 100])  # one bucket of 8 points (Python) or 98 (numpy)
def test_lttb_never_prefers_a_nan(n: int) -> None:
    nan = float("nan")
    ys = [0.0] * n
    ys[1], ys[5] = nan, 5.0
    assert run_lttb(ys, 3) == [0, 5, n - 1]
    assert run_lttb([0.0] + [nan] * (n - 2) + [0.0], 3) == [0, 1, n - 1]  # all NaN: the first


# -- the budget --------------------------------------------------------------------------------


def test_budget_drops_least_recently_charged_first_and_skips_entries_in_use() -> None:
    budget = CacheBudget(100)
    dropped: list[str] = []
    busy = {"b"}

    def drop(key: str) -> bool:
        if key in busy:
            return False
        dropped.append(key)
        return True

    for key, size in (("a", 40), ("b", 40), ("c", 20)):
        budget.charge(key, size, lambda k=key: drop(k))  # type: ignore[misc]
    assert (budget.held, dropped) == (100, [])
    budget.charge("a", 40, lambda: drop("a"))  # used again: now the most recent
    budget.charge("d", 30, lambda: drop("d"))  # over: b is busy, so c goes, then a
    assert dropped == ["c", "a"]
    assert budget.held == 70 and "b" in budget and "d" in budget
    budget.charge("e", 500, lambda: drop("e"))  # the one charged last stays, even alone over
    assert dropped == ["c", "a", "d"] and "e" in budget and budget.held == 540
    budget.trim()  # once in use no more, it goes too
    assert dropped == ["c", "a", "d", "e"] and budget.held == 40


# -- columns in the store ----------------------------------------------------------------------


def records(steps: range, names: tuple[bytes, ...] = (b"loss", b"acc")) -> bytes:
    return b"".join(encode_record(TS + i, i, math.sin(i), names[i % len(names)]) for i in steps)


async def make(store: ExperimentStore, commit: str, data: bytes) -> None:
    await store.create(Metadata(commit_id=commit, timestamp=TS))
    await store.append(commit, data, len(decode_records(data)))


async def test_columns_hold_every_record_and_grow_with_the_file(tmp_path: Path) -> None:
    commit = "1" * 40
    async with ExperimentStore(tmp_path) as store:
        cache = SeriesCache(store)
        await make(store, commit, records(range(1000)))
        async with cache.columns(commit) as columns:
            assert list(columns) == [b"loss", b"acc"]
            assert columns[b"acc"].steps.tolist() == list(range(1, 1000, 2))
            assert columns[b"loss"].record(3, b"loss") == encode_record(
                TS + 6, 6, math.sin(6), b"loss"
            )
        data = records(range(1000, 1003), (b"lr",))
        await store.append(commit, data, 3)
        async with cache.columns(commit) as columns:
            assert list(columns) == [b"loss", b"acc", b"lr"]
            assert columns[b"lr"].steps.tolist() == [1000, 1001, 1002]
            assert columns[b"acc"].values[-1] == math.sin(999)


async def test_columns_beyond_the_budget_are_dropped_least_recent_first(tmp_path: Path) -> None:
    """Each experiment's columns take 20,000 bytes (1,000 records of 20); the budget holds
    two sets, so the third query drops the least recently used one."""
    a, b, c = "a" * 40, "b" * 40, "c" * 40
    async with ExperimentStore(tmp_path, cache_bytes=45_000) as store:
        cache = SeriesCache(store)
        for commit in (a, b, c):
            await make(store, commit, records(range(1000)))
        for commit in (a, b, a, c):
            async with cache.columns(commit) as columns:
                assert sum(len(s.steps) for s in columns.values()) == 1000
        assert ("columns", a) in store.budget and ("columns", c) in store.budget
        assert ("columns", b) not in store.budget
        assert 40_000 <= store.budget.held <= 45_000


async def test_columns_larger_than_the_budget_are_not_kept(tmp_path: Path) -> None:
    commit = "d" * 40
    async with ExperimentStore(tmp_path, cache_bytes=10_000) as store:
        cache = SeriesCache(store)
        await make(store, commit, records(range(1000)))
        async with cache.columns(commit) as columns:
            assert ("columns", commit) in store.budget  # held while in use
            assert len(columns[b"loss"].steps) == 500
        assert store.budget.held == 0
        async with cache.columns(commit) as columns:  # and built again when asked
            assert len(columns[b"acc"].steps) == 500


async def test_offset_indexes_and_columns_share_one_budget(tmp_path: Path) -> None:
    paged, sampled = "e" * 40, "f" * 40
    async with ExperimentStore(tmp_path, cache_bytes=25_000) as store:
        cache = SeriesCache(store)
        await make(store, paged, records(range(1000)))
        await make(store, sampled, records(range(1000)))
        await store.read(paged, 990)
        assert ("offsets", paged) in store.budget  # 8 bytes a record
        async with cache.columns(sampled):
            pass
        assert ("offsets", paged) not in store.budget
        held = store.held(paged)
        assert held is not None and len(held.index.offsets) == 1  # dropped; rebuilt on demand
        chunk = await store.read(paged, 995, max_records=2)
        assert [r.step for r in decode_records(chunk.data)] == [995, 996]
