"""The saved listing (`<base>/.fetchml-listing`): what it keeps and what it ignores."""

from pathlib import Path

from fetchml.protocol.records import Metadata
from fetchml.server import listcache
from fetchml.server.experiment import FileState
from fetchml.server.listing import Seen


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
