"""The saved listing (`<base>/.fetchml-listing`): what it keeps, what it ignores, and when
it is written."""

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from fetchml.protocol.metrics import encode_record
from fetchml.protocol.records import Metadata
from fetchml.server import listcache, lister
from fetchml.server.experiment import FileState
from fetchml.server.listing import Seen
from fetchml.server.storage import ExperimentStore
from tests.support.experiments import make_experiment, meta_bytes

TS = 1_700_000_000


def listing(count: int) -> dict[str, Seen]:
    out = {}
    for i in range(count):
        commit = f"{i:040x}"
        meta = Metadata(commit_id=commit, timestamp=1_700_000_000 + i, job_name="job", user="u")
        state = FileState(end=29 * i, count=i, size=29 * i)
        out[commit] = Seen((i, i + 1, 0o40755), meta, None, (i, 29 * i, i + 2), state)
    out["f" * 40] = Seen((1, 2, 0o40755), None, "meta.bin is a directory")
    return out


def test_a_saved_listing_loads_as_it_was(tmp_path: Path) -> None:
    seen = listing(50)
    listcache.save(tmp_path, seen)
    assert listcache.load(tmp_path) == seen


def test_a_listing_of_another_version_or_damaged_is_ignored(tmp_path: Path) -> None:
    listcache.save(tmp_path, listing(3))
    path = tmp_path / listcache.LISTING
    lines = path.read_text().splitlines()
    path.write_text("\n".join(['{"version": 1}', *lines[1:]]))
    assert listcache.load(tmp_path) == {}
    path.write_text("\n".join([*lines[:2], "[not json", *lines[3:]]))
    assert listcache.load(tmp_path) == {}


async def test_a_changed_listing_is_saved_at_most_every_interval_and_when_the_store_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store with no saved listing saves its first one at once; one that read a saved
    listing keeps a change for the next save (SAVE_INTERVAL_S apart) or its close, so a
    restarted daemon's first LIST never competes with a rewrite of every entry."""
    saved = tmp_path / listcache.LISTING
    commits = [f"{i:040x}" for i in range(3)]
    for commit in commits:  # as another process made them: the store holds none
        make_experiment(tmp_path, commit, b"", meta_bytes(commit))

    async def counts() -> list[int]:
        return sorted(info.metrics_count for info in await store.list_experiments())

    def append(commit: str) -> None:  # as another process would
        with (tmp_path / commit / "metrics.bin").open("ab") as f:
            f.write(encode_record(TS, 0, 1.0, b"loss"))

    async with ExperimentStore(tmp_path) as store:
        assert await counts() == [0, 0, 0]
        await wait_for(saved.exists)
    first = saved.read_bytes()
    async with ExperimentStore(tmp_path) as store:
        append(commits[0])
        assert await counts() == [0, 0, 1]
        await anyio.sleep(0.2)
        assert saved.read_bytes() == first  # kept for the next save
    assert saved.read_bytes() != first  # saved as the store closed
    assert sorted(s.state.count for s in listcache.load(tmp_path).values() if s.state) == [0, 0, 1]
    monkeypatch.setattr(lister, "SAVE_INTERVAL_S", 0.0)
    async with ExperimentStore(tmp_path) as store:
        append(commits[1])
        second = saved.read_bytes()
        assert await counts() == [0, 1, 1]
        await wait_for(lambda: saved.read_bytes() != second)


async def wait_for(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)
