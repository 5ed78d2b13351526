"""Two ExperimentStores on one tree, as two cluster nodes hold it: forgetting a pruned
experiment, the device+inode check of appends, prune's rename under the experiment's
flock, and reads that see the other store's appends at once."""

import os
from pathlib import Path

from fetchml.protocol.metrics import decode_records, encode_record
from fetchml.protocol.records import Metadata
from fetchml.server.experiment import Phase
from fetchml.server.storage import ExperimentStore

C = "5" * 40
TS = 1795735109


def meta(c: str = C) -> Metadata:
    return Metadata(commit_id=c, timestamp=TS, job_name="job", user="alice")


def rec(i: int) -> bytes:
    return encode_record(TS, i, float(i), b"loss")


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_forget_drops_the_open_file_and_every_cache(tmp_path: Path) -> None:
    async with ExperimentStore(tmp_path) as store:
        forgotten: list[str] = []
        store.forget_hooks.append(forgotten.append)
        await store.create(meta())
        before = fds()
        await store.append(C, rec(0), 1)
        assert store.phase(C) is Phase.OPEN
        await store.read(C)
        held = store.held(C)
        assert held is not None and held.fd is not None
        store.forget(C)
        assert store.held(C) is None
        assert held.phase is Phase.REMOVED and held.fd is None
        assert fds() == before
        assert forgotten == [C]
        # replaced from outside by a shorter experiment of the same commit: read anew
        os.rename(tmp_path / C, tmp_path / ".old")
        await store.create(meta())
        assert await store.count(C) == 0
        assert await store.append(C, rec(7) + rec(8), 2) == 0
        chunk = await store.read(C)
        assert [r.step for r in decode_records(chunk.data)] == [7, 8]
