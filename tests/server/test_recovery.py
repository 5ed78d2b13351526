"""Torn tails, corruption and failed writes (PROTOCOL.md section 1), on real files."""

import asyncio
import errno
import io
import os
import random
import stat
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.metrics import decode_records, encode_record, scan
from fetchml.protocol.records import Metadata, encode_metadata
from fetchml.server import files, tools
from fetchml.server.errors import ServerError
from fetchml.server.files import MAX_TORN_BYTES
from fetchml.server.storage import ExperimentStore

TS = 1795735109
MIN_TS, MAX_TS = 946684800, 4294967296
NEW = encode_record(TS + 1, 99, 42.0, b"new")


def commit(n: int) -> str:
    return f"{n:040x}"


def rec(name: bytes, step: int = 0, value: float = 1.0) -> bytes:
    return encode_record(TS, step, value, name)


def make_experiment(base: Path, c: str, metrics: bytes | None) -> Path:
    """An experiment directory as any writer would leave it; returns metrics.bin's path."""
    directory = base / c
    (directory / "files").mkdir(parents=True)
    (directory / "meta.bin").write_bytes(
        encode_metadata(Metadata(commit_id=c, timestamp=1764000000, job_name="j", user="u"))
    )
    path = directory / "metrics.bin"
    if metrics is not None:
        path.write_bytes(metrics)
    return path


def torn_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob("metrics.bin.torn-*"))


def valid_end(data: bytes) -> int:
    """Reference for the valid prefix, written straight from PROTOCOL.md's rule."""
    pos = end = 0
    while pos + 21 <= len(data):
        timestamp = int.from_bytes(data[pos : pos + 8], "big")
        length = data[pos + 20]
        stop = pos + 21 + length
        if not MIN_TS <= timestamp < MAX_TS or stop > len(data):
            break
        name = data[pos + 21 : stop]
        if b"\0" in name:
            break
        if name:
            end = stop
        pos = stop
    return end


def check_recovered(path: Path, original: bytes, first: int) -> None:
    """After one append of NEW to `original`: the torn tail cut, copied once, no phantom."""
    end = valid_end(original)
    kept = original[:end]
    data = path.read_bytes()
    assert data == kept + NEW
    assert scan(data)[:2] == (len(data), first + 1)  # whole file valid, no remainder
    assert decode_records(data)[:first] == decode_records(kept)
    copies = torn_copies(path)
    if end == len(original):
        assert copies == []
    else:
        assert len(copies) == 1
        assert copies[0].read_bytes() == original[end:]
        assert stat.S_IMODE(copies[0].stat().st_mode) == 0o600


async def recover_all(base: Path, files: dict[str, bytes]) -> None:
    """Write each file into its own experiment, append NEW to all at once, check each."""
    paths = {c: make_experiment(base, c, data) for c, data in files.items()}
    async with ExperimentStore(base) as store:
        firsts = await asyncio.gather(*(store.append(c, NEW, 1) for c in files))
        for c, first in zip(files, firsts, strict=True):
            assert await store.count(c) == first + 1
            assert (await store.read(c, first)).data == NEW
    for (c, data), first in zip(files.items(), firsts, strict=True):
        check_recovered(paths[c], data, first)


NAMED = [
    rec(b"loss"),
    rec(b"accuracy", 1),
    rec("é-name".encode(), 2),
    rec(b"x" * 40, 3),
    rec(b"lr"),
]
GO_EMPTIES = [rec(b"loss"), rec(b"", 1), rec(b"acc", 2), rec(b"", 3), rec(b"", 4), rec(b"val", 5)]


@pytest.mark.parametrize("records", [NAMED, GO_EMPTIES], ids=["named", "go-empties"])
async def test_cut_at_every_offset_of_the_last_three_records(
    tmp_path: Path, records: list[bytes]
) -> None:
    full = b"".join(records)
    start = len(b"".join(records[:-3]))
    files = {commit(cut + 1): full[:cut] for cut in range(start, len(full) + 1)}
    await recover_all(tmp_path, files)


def test_reference_valid_prefix_matches_the_examples() -> None:
    """The reference itself: Go's empty names count only when a named record follows."""
    go = b"".join(GO_EMPTIES)
    assert valid_end(go) == len(go)
    assert valid_end(go[:-1]) == len(b"".join(GO_EMPTIES[:3]))
    assert valid_end(b"".join(NAMED) + bytes(25)) == len(b"".join(NAMED))


@pytest.mark.parametrize("zeros", [1, 2, 20, 21, 25, 100, 4096])
async def test_zero_filled_tail(tmp_path: Path, zeros: int) -> None:
    files = {
        commit(1): b"".join(NAMED) + bytes(zeros),
        commit(2): b"".join(GO_EMPTIES) + bytes(zeros),
        commit(3): bytes(zeros),  # nothing valid at all
    }
    await recover_all(tmp_path, files)
    assert (tmp_path / commit(3) / "metrics.bin").read_bytes() == NEW


@pytest.mark.parametrize("seed", range(8))
async def test_random_tail(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    files = {
        commit(n + 1): b"".join(NAMED) + rng.randbytes(rng.randint(1, 4096)) for n in range(16)
    }
    await recover_all(tmp_path, files)


def cut_record_then(name: bytes, cut: int, junk: bytes) -> bytes:
    return rec(name)[:cut] + junk


TAILS = st.one_of(
    st.binary(min_size=1, max_size=4096),
    st.builds(
        cut_record_then,
        st.binary(min_size=0, max_size=30),
        st.integers(min_value=1, max_value=50),
        st.binary(max_size=64),
    ),
)


@settings(max_examples=60, deadline=None, database=None)
@given(prefix=st.sampled_from([NAMED, GO_EMPTIES, []]), tail=TAILS)
def test_any_tail(prefix: list[bytes], tail: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(recover_all(Path(tmp), {commit(1): b"".join(prefix) + tail}))


async def test_go_empty_names_followed_by_named_records_survive(tmp_path: Path) -> None:
    records = [rec(b"a"), rec(b""), rec(b"", 1), rec(b"b", 2), rec(b"", 3), rec(b"c", 4)]
    path = make_experiment(tmp_path, commit(1), b"".join(records) + rec(b"", 5) + bytes(7))
    async with ExperimentStore(tmp_path) as store:
        assert await store.count(commit(1)) == 6
        assert await store.append(commit(1), NEW, 1) == 6
    assert path.read_bytes() == b"".join(records) + NEW
    assert [r.name for r in decode_records(path.read_bytes())] == ["a", "", "", "b", "", "c", "new"]
    assert [p.read_bytes() for p in torn_copies(path)] == [rec(b"", 5) + bytes(7)]


CHUNK = 4 << 20  # files.READ_CHUNK: scans read the file in pieces of this size


def records_ending_on_chunk(boundary: str) -> tuple[list[bytes], int]:
    """(records, how many) of a file a little over one scan chunk, with `boundary` at 4 MiB."""
    if boundary == "named":  # 32-byte records: one ends exactly at 4 MiB
        head = [rec(b"n" * 11)] * (CHUNK // 32)
    elif boundary == "empty":  # a Go empty-name record ends exactly at 4 MiB
        k = (CHUNK - 21 - 100) // 32
        pad = CHUNK - 21 - 32 * k - 21  # name length of one odd record
        head = [rec(b"n" * 11)] * k + [rec(b"p" * pad), rec(b"", 1)]
    else:  # 33-byte records: no record ends at 4 MiB
        head = [rec(b"n" * 12)] * (CHUNK // 33)
    tail = [rec(b"t", i) for i in range(10)]
    assert boundary == "none" or len(b"".join(head)) == CHUNK
    return head + tail, len(head) + len(tail)


@pytest.mark.parametrize("boundary", ["named", "empty", "none"])
async def test_file_larger_than_the_read_chunk(tmp_path: Path, boundary: str) -> None:
    """A record ending exactly on the 4 MiB scan chunk is no torn tail: counts and reads
    see every record, and the first append cuts nothing."""
    records, count = records_ending_on_chunk(boundary)
    original = b"".join(records)
    path = make_experiment(tmp_path, commit(1), original)
    async with ExperimentStore(tmp_path) as reader:
        counted = await reader.count(commit(1))
    async with ExperimentStore(tmp_path) as store:
        first = await store.append(commit(1), NEW, 1)
        last = await store.read(commit(1), count - 11, 1 << 20)
    cut = sum(p.stat().st_size for p in torn_copies(path))
    assert (counted, first, cut) == (count, count, 0)
    assert last.data == b"".join(records[-11:]) + NEW
    assert path.read_bytes() == original + NEW


# -- corruption ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "corrupt"), [(MAX_TORN_BYTES, False), (MAX_TORN_BYTES + 1, True)]
)
async def test_more_than_8_mib_after_the_prefix_is_corruption(
    tmp_path: Path, garbage: int, corrupt: bool
) -> None:
    c = commit(1)
    prefix = b"".join(NAMED)
    original = prefix + b"\xff" * garbage  # fails the timestamp rule at once
    path = make_experiment(tmp_path, c, original)
    async with ExperimentStore(tmp_path) as store:
        if not corrupt:
            assert await store.append(c, NEW, 1) == len(NAMED)
            check_recovered(path, original, len(NAMED))
            return
        for _ in range(2):
            with pytest.raises(ServerError) as info:
                await store.append(c, NEW, 1)
            assert info.value.code == ErrorCode.STORAGE_ERROR
            assert info.value.message == "metrics file corrupt"
        assert await store.count(c) == len(NAMED)
        assert (await store.read(c, 0)).data == prefix
        assert await store.read_all(c) == prefix
    assert path.stat().st_size == len(original)
    assert path.read_bytes() == original
    assert torn_copies(path) == []
    async with ExperimentStore(tmp_path) as reader:  # a fresh store reads the prefix too
        assert await reader.count(c) == len(NAMED)
        assert (await reader.read(c, 1)).data == prefix[len(NAMED[0]) :]

    out = io.StringIO()
    assert tools.fsck(tmp_path, repair=False, out=out) == 1
    assert f"{c}: metrics.bin corrupt: {garbage} bytes after 5 valid records" in out.getvalue()
    assert path.read_bytes() == original

    out = io.StringIO()
    assert tools.fsck(tmp_path, repair=True, out=out) == 1
    assert "repaired" in out.getvalue()
    assert path.read_bytes() == prefix
    assert [p.read_bytes() == b"\xff" * garbage for p in torn_copies(path)] == [True]
    assert tools.fsck(tmp_path, repair=False, out=io.StringIO()) == 0

    async with ExperimentStore(tmp_path) as store:
        assert await store.append(c, NEW, 1) == len(NAMED)
    assert path.read_bytes() == prefix + NEW


async def test_a_repaired_file_takes_appends_again_without_a_restart(tmp_path: Path) -> None:
    c = commit(1)
    prefix = b"".join(NAMED)
    path = make_experiment(tmp_path, c, prefix + b"\xff" * (MAX_TORN_BYTES + 1))
    async with ExperimentStore(tmp_path) as store:
        for _ in range(2):
            with pytest.raises(ServerError) as info:
                await store.append(c, NEW, 1)
            assert info.value.message == "metrics file corrupt"
        assert tools.fsck(tmp_path, repair=True, out=io.StringIO()) == 1
        assert await store.append(c, NEW, 1) == len(NAMED)
    assert path.read_bytes() == prefix + NEW


# -- torn copies ------------------------------------------------------------------------------


class FrozenClock:
    """server.files' view of the time module, with time.time() fixed."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


async def test_torn_copies_in_the_same_second_get_suffixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "time", FrozenClock(1_800_000_000.5))
    c = commit(1)
    path = make_experiment(tmp_path, c, rec(b"a"))
    tails = [b"\x00" * 3, b"\x01" * 5, rec(b"x")[:10]]
    expected = [rec(b"a")]
    for tail in tails:
        path.write_bytes(path.read_bytes() + tail)
        async with ExperimentStore(tmp_path) as store:  # a fresh store recovers on first append
            await store.append(c, NEW, 1)
        expected.append(NEW)
        assert path.read_bytes() == b"".join(expected)
    names = {p.name: p.read_bytes() for p in torn_copies(path)}
    assert names == {
        "metrics.bin.torn-1800000000": tails[0],
        "metrics.bin.torn-1800000000-2": tails[1],
        "metrics.bin.torn-1800000000-3": tails[2],
    }


async def test_tail_written_behind_an_open_store_is_cut(tmp_path: Path) -> None:
    """Another writer left a torn tail while our descriptor was open."""
    c = commit(1)
    path = make_experiment(tmp_path, c, None)
    async with ExperimentStore(tmp_path) as store:
        assert await store.append(c, rec(b"a"), 1) == 0
        with path.open("ab") as f:
            f.write(rec(b"other") + rec(b"torn")[:12])
        assert await store.append(c, NEW, 1) == 2
        assert await store.count(c) == 3
    assert path.read_bytes() == rec(b"a") + rec(b"other") + NEW
    assert [p.read_bytes() for p in torn_copies(path)] == [rec(b"torn")[:12]]


# -- failed writes ----------------------------------------------------------------------------


async def test_failed_partial_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = commit(1)
    path = make_experiment(tmp_path, c, None)
    real_write_all = files.write_all
    failures: list[int] = []

    def half_then_enospc(fd: int, data: bytes) -> None:
        if failures:
            return real_write_all(fd, data)
        failures.append(len(data))
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async with ExperimentStore(tmp_path) as store:
        assert await store.append(c, rec(b"kept"), 1) == 0
        monkeypatch.setattr(files, "write_all", half_then_enospc)
        # three requests in one flush: whole records sit in the half that got written
        futures = [store.submit(c, rec(b"lost", i) * 4, 4) for i in range(3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert failures == [3 * 4 * len(rec(b"lost"))]
        for result in results:
            assert isinstance(result, ServerError)
            assert result.code == ErrorCode.DISK_FULL
        assert path.read_bytes() == rec(b"kept")
        assert await store.count(c) == 1

        assert await store.append(c, NEW, 1) == 1
        assert await store.count(c) == 2
        assert (await store.read(c, 0)).data == rec(b"kept") + NEW
    assert path.read_bytes() == rec(b"kept") + NEW
    assert torn_copies(path) == []
