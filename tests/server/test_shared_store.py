"""Two ExperimentStores on one tree, as two cluster nodes hold it: forgetting a pruned
experiment, the device+inode check of appends, prune's rename under the experiment's
flock, and reads that see the other store's appends at once."""

import os
import threading
from pathlib import Path

import anyio
import pytest

from fetchml.protocol.metrics import decode_records, encode_record
from fetchml.protocol.records import Metadata
from fetchml.server import exlock
from fetchml.server.errors import NotFound
from fetchml.server.experiment import Phase
from fetchml.server.storage import Durability, ExperimentStore

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


@pytest.mark.parametrize("durability", ["write", "fsync"])  # inline, or a worker step
async def test_an_append_to_a_replaced_experiment_is_not_found_and_never_lands(
    tmp_path: Path, durability: Durability
) -> None:
    async with (
        ExperimentStore(tmp_path, durability=durability, shared=True) as a,
        ExperimentStore(tmp_path, shared=True) as b,
    ):
        await a.create(meta())
        await a.append(C, rec(0), 1)
        os.rename(tmp_path / C, tmp_path / ".away")  # pruned, then made again, elsewhere
        await b.create(meta())
        with pytest.raises(NotFound):
            await a.append(C, rec(1), 1)
        assert a.held(C) is None
        assert (tmp_path / ".away" / "metrics.bin").read_bytes() == rec(0)
        assert await a.append(C, rec(2), 1) == 0  # the new experiment's file
        assert (tmp_path / C / "metrics.bin").read_bytes() == rec(2)


async def test_prune_waits_for_the_experiment_flock_and_renames_away(tmp_path: Path) -> None:
    async with ExperimentStore(tmp_path) as store:
        await store.create(meta())
        await store.append(C, rec(0), 1)
        locked, release = threading.Event(), threading.Event()

        def hold() -> None:
            with exlock.held(tmp_path / C):
                locked.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        locked.wait(30)
        async with anyio.create_task_group() as tg:
            pruned: list[list[str]] = []

            async def prune() -> None:
                pruned.append(await store.prune("older", 1, now=TS + 2 * 86400))

            tg.start_soon(prune)
            await anyio.sleep(0.2)
            assert not pruned and (tmp_path / C / "metrics.bin").exists()
            release.set()
        holder.join()
        assert pruned == [[C]]
        assert sorted(os.listdir(tmp_path)) == []
        with pytest.raises(NotFound):
            await store.append(C, rec(1), 1)
        assert not (tmp_path / C).exists()


def test_a_step_on_a_pruned_experiment_is_not_found_and_makes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / C
    directory.mkdir()
    assert exlock.remove(directory)
    assert not exlock.remove(directory)  # another process pruned it first
    with pytest.raises(NotFound), exlock.held(directory):
        pass
    assert os.listdir(tmp_path) == []


async def test_sidecars_are_written_under_the_experiment_flock(tmp_path: Path) -> None:
    async with ExperimentStore(tmp_path, index_bytes=0, shared=True) as store:
        await store.create(meta())
        await store.append(C, b"".join(rec(i) for i in range(10)), 10)
        locked, release = threading.Event(), threading.Event()

        def hold() -> None:
            with exlock.held(tmp_path / C):
                locked.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        locked.wait(30)
        counted: list[int | None] = []
        async with anyio.create_task_group() as tg:

            async def query() -> None:
                counted.append(await store.on_sidecars(C, lambda _d, cp, _c: cp.count))

            tg.start_soon(query)
            await anyio.sleep(0.2)
            assert not counted and not (tmp_path / C / "index").exists()
            release.set()
        holder.join()
        assert counted == [10]


async def test_a_directory_left_between_prunes_rename_and_delete_is_deleted(
    tmp_path: Path,
) -> None:
    """A process killed after prune renamed a directory away, before it deleted it, leaves
    it behind: the next store to open the tree, and the next prune, delete it."""

    def left_behind(name: str) -> Path:
        away = tmp_path / f"{exlock.PRUNED}{name}-1234-5678"
        (away / "files").mkdir(parents=True)
        (away / "metrics.bin").write_bytes(rec(0))
        return away

    first = left_behind("6" * 40)
    async with ExperimentStore(tmp_path) as store:
        assert not first.exists()
        await store.create(meta())
        second = left_behind("7" * 40)
        assert await store.prune("keep", 1) == []
        assert not second.exists()
    assert os.listdir(tmp_path) == [C]
