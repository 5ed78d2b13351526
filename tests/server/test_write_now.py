"""Group commit on the event loop (durability write): small flushes are written by a
callback, not a task, and `flush_scheduled` writes them at once; what the callback
cannot write (first open, a big batch) still goes to a flusher task, and fsync always
does. Acknowledged = written: a future is resolved only once its bytes are in the file."""

import asyncio
from pathlib import Path

import anyio
import pytest

from fetchml.protocol.metrics import encode_record
from fetchml.protocol.records import Metadata
from fetchml.server.storage import INLINE_WRITE_BYTES, Durability, ExperimentStore

C = "ab" * 20


def record(step: int, name: str = "loss") -> bytes:
    return encode_record(1764000000, step, 0.5, name.encode())


def file_bytes(base: Path) -> bytes:
    return (base / C / "metrics.bin").read_bytes()


async def opened(store: ExperimentStore) -> None:
    """The experiment made and its file opened for appending (by a flusher task)."""
    await store.create(Metadata(commit_id=C, timestamp=1764000000, job_name="j", user="u"))
    assert await store.append(C, record(0), 1) == 0


async def test_small_writes_need_no_task_and_are_written_when_flushed(tmp_path: Path) -> None:
    async with ExperimentStore(tmp_path) as store:
        await opened(store)
        tasks = asyncio.all_tasks()
        futures = [store.submit(C, record(step), 1) for step in (1, 2, 3)]
        assert asyncio.all_tasks() == tasks  # a task per flush costs more than the write
        assert not any(f.done() for f in futures)
        store.flush_scheduled()
        assert [f.result() for f in futures] == [1, 2, 3]
        assert file_bytes(tmp_path) == b"".join(record(step) for step in range(4))
        store.flush_scheduled()  # nothing scheduled: nothing happens
        await asyncio.sleep(0)  # the cancelled callback does not write again
        assert len(file_bytes(tmp_path)) == 4 * len(record(0))


async def test_scheduled_writes_run_at_the_next_turn(tmp_path: Path) -> None:
    async with ExperimentStore(tmp_path) as store:
        await opened(store)
        future = store.submit(C, record(1), 1)
        await asyncio.sleep(0)
        assert future.result() == 1
        assert file_bytes(tmp_path) == record(0) + record(1)


@pytest.mark.parametrize("durability", ["write", "fsync"])
async def test_what_the_loop_cannot_write_goes_to_a_task(
    tmp_path: Path, durability: Durability
) -> None:
    big = [record(step, "n" * 200) for step in range(1, INLINE_WRITE_BYTES // 200 + 2)]
    async with ExperimentStore(tmp_path, durability=durability) as store:
        await opened(store)
        small = store.submit(C, record(1000), 1)
        batch = store.submit(C, b"".join(big), len(big))
        store.flush_scheduled()  # too big for the event loop: handed to a task
        with anyio.fail_after(10):
            assert await small == 1
            assert await batch == 2
    assert file_bytes(tmp_path) == record(0) + record(1000) + b"".join(big)


async def test_a_write_scheduled_as_the_store_closes_is_made(tmp_path: Path) -> None:
    async with ExperimentStore(tmp_path) as store:
        await opened(store)
        future = store.submit(C, record(1), 1)
    with anyio.fail_after(5):
        assert await future == 1
    assert file_bytes(tmp_path) == record(0) + record(1)


async def test_a_failing_flush_hook_loses_no_write(tmp_path: Path) -> None:
    def broken(records: int, seconds: float) -> None:
        raise RuntimeError("metrics broke")

    async with ExperimentStore(tmp_path) as store:
        await opened(store)
        store.flush_hooks.append(broken)
        first = store.submit(C, record(1), 1)
        store.flush_scheduled()
        assert first.result() == 1
        assert await store.append(C, record(2), 1) == 2  # the queue still flushes
    assert file_bytes(tmp_path) == b"".join(record(step) for step in range(3))
