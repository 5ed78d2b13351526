"""Record-offset indexes stay within the store's memory budget and rebuild on demand."""

from pathlib import Path

from fetchml.protocol.metrics import decode_records, encode_record
from fetchml.protocol.records import Metadata
from fetchml.server.storage import ExperimentStore

TS = 1795735109


async def test_indexes_beyond_the_budget_are_dropped_oldest_first(tmp_path: Path) -> None:
    commits = [f"{n:040x}" for n in (1, 2)]
    async with ExperimentStore(tmp_path, cache_bytes=8 * 1500) as store:
        for commit in commits:
            await store.create(Metadata(commit_id=commit, timestamp=TS))
            data = b"".join(encode_record(TS, i, float(i), b"loss") for i in range(1000))
            await store.append(commit, data, 1000)
        first, second = (store.held(c) for c in commits)
        assert first is not None and second is not None

        await store.read(commits[0], 990)
        assert len(first.index.offsets) == 1001  # indexed in full
        await store.read(commits[1], 990)
        assert len(second.index.offsets) == 1001  # the one in use keeps its index
        assert len(first.index.offsets) == 1  # the older one gave its up

        chunk = await store.read(commits[0], 995, max_records=3)  # and rebuilds it
        assert [r.step for r in decode_records(chunk.data)] == [995, 996, 997]


async def test_evicted_and_pruned_experiments_give_their_index_back(tmp_path: Path) -> None:
    a, b = (f"{n:040x}" for n in (1, 2))
    data = b"".join(encode_record(TS, i, float(i), b"loss") for i in range(1000))
    async with ExperimentStore(tmp_path, max_open_files=1) as store:
        for commit in (a, b):
            await store.create(Metadata(commit_id=commit, timestamp=TS))
            await store.append(commit, data, 1000)
        await store.read(a, 990)
        assert ("offsets", a) in store.budget and store.budget.held == 8 * 1001
        await store.count(b)  # holding b evicts a
        assert ("offsets", a) not in store.budget and store.budget.held == 0
        await store.read(b, 990)
        assert store.budget.held == 8 * 1001
        assert await store.prune("keep", 0) == [a, b]
        assert ("offsets", b) not in store.budget and store.budget.held == 0
