"""Sidecars (index/ beside metrics.bin): the first pass finds what a scan finds, and every
way a sidecar can lie makes it ignored and rebuilt, never trusted over metrics.bin."""

import functools
import hashlib
import io
import os
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fetchml.protocol.metrics import (
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    MetricRecord,
    decode_metrics_payload,
    decode_records,
    encode_record,
    scan,
)
from fetchml.protocol.records import Metadata
from fetchml.protocol.requests import QueryMetrics
from fetchml.server import fastscan, indexer, offsets, series, sidecar, tools
from fetchml.server.files import scan_file
from fetchml.server.query import query_page
from fetchml.server.series import SeriesCache
from fetchml.server.sidecar import Checkpoint
from fetchml.server.storage import ExperimentStore
from tests.support.daemon import poll
from tests.support.experiments import STAMP, big_metrics, make_experiment
from tests.support.lttb import reference_lttb

NAMES = (b"loss", b"accuracy", b"lr", b"grad/norm")


@functools.cache
def prefix() -> bytes:
    """150,000 records (4.4 MiB): the first pass reads them in two pieces."""
    return big_metrics(150_000, (b"loss", b"grad"))


def records(n: int, seed: int = 0, names: tuple[bytes, ...] = NAMES) -> bytes:
    rng = random.Random(seed)
    return b"".join(
        encode_record(STAMP + i // 100, i, rng.uniform(-1, 1), rng.choice(names)) for i in range(n)
    )


def experiment(tmp_path: Path, data: bytes) -> Path:
    return make_experiment(tmp_path, "ab" * 20, data).parent


def build(directory: Path) -> tuple[Checkpoint, int, int]:
    """Index the experiment from scratch: (checkpoint, valid end, records)."""
    fd = os.open(directory / "metrics.bin", os.O_RDONLY)
    try:
        cp, result = indexer.extend(directory, fd, None)
        return cp, result.end, result.records
    finally:
        os.close(fd)


def trusted(directory: Path) -> tuple[Checkpoint | None, str | None]:
    fd = os.open(directory / "metrics.bin", os.O_RDONLY)
    try:
        return sidecar.trusted(directory, fd)
    finally:
        os.close(fd)


def resume(directory: Path) -> tuple[int, int, Checkpoint | None]:
    """What the store does on a first open: (valid end, records, checkpoint now)."""
    fd = os.open(directory / "metrics.bin", os.O_RDONLY)
    try:
        result, cp = indexer.resume(directory, fd, 0, 0, None, 1)
        return result.end, result.records, cp
    finally:
        os.close(fd)


def columns(directory: Path, cp: Checkpoint) -> dict[bytes, list[tuple[int, int, int, float]]]:
    out = {}
    for k, info in enumerate(cp.names):
        sidecar.check_rows(directory, k, info)
        rows = sidecar.read_rows(directory, k, 0, info.rows)
        out[info.name] = rows.tolist()
    return out


def expected_columns(data: bytes) -> dict[bytes, list[tuple[int, int, int, float]]]:
    out: dict[bytes, list[tuple[int, int, int, float]]] = {}
    for i, r in enumerate(decode_records(data[: scan(data).end])):
        out.setdefault(r.name.encode(), []).append((i, r.timestamp, r.step, r.value))
    return out


# -- the first pass ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        records(1)[:-2],  # a record cut in its name
        encode_record(STAMP, 1, 1.0, b""),  # an empty name with nothing after it
        encode_record(STAMP, 1, 1.0, b"") + records(2),  # ... followed by valid records
        encode_record(STAMP, 1, 1.0, b"a\0b") + records(3),  # 0x00 in a name
        encode_record(5, 1, 1.0, b"loss") + records(3),  # an implausible timestamp
        bytes(random.Random(9).randbytes(3000)),  # garbage
    ],
    ids=["whole", "cut", "empty name last", "empty name", "0x00", "timestamp", "garbage"],
)
def test_the_first_pass_finds_the_valid_prefix_a_scan_finds(tmp_path: Path, tail: bytes) -> None:
    # The odd part comes after several reads of the first pass.
    data = prefix() + records(300) + tail + records(50, seed=1)
    directory = experiment(tmp_path, data)
    cp, end, count = build(directory)
    fd = os.open(directory / "metrics.bin", os.O_RDONLY)
    try:
        reference = scan_file(fd)
    finally:
        os.close(fd)
    assert (end, count) == (reference.end, reference.records)
    assert (cp.end, cp.count) == (end, count)
    expected = expected_columns(data)
    assert columns(directory, cp) == expected
    assert [info.name for info in cp.names] == list(expected)  # in order of first appearance
    for info in cp.names:
        rows = expected[info.name]
        assert (info.first.index, info.last.index, info.rows) == (
            rows[0][0],
            rows[-1][0],
            len(rows),
        )


@pytest.mark.parametrize("seed", range(3))
def test_finding_records_by_lanes_equals_walking_them(seed: int) -> None:
    rng = random.Random(seed)
    names = [bytes(rng.choice(b"abcdefgh") for _ in range(rng.randrange(1, 80))) for _ in range(5)]
    data = b"".join(
        encode_record(
            STAMP, rng.randrange(3), rng.choice([0.0, 1.0, rng.random()]), rng.choice(names)
        )
        for _ in range(20_000)
    )
    buf = fastscan.Buffer(data + data[:17])  # and a record cut at the end
    starts, stop = fastscan.find_starts(buf)
    walked, walked_stop = fastscan._walk(buf.data)
    assert stop == walked_stop
    assert np.array_equal(starts, walked)


def test_periodic_records_that_never_fall_into_step_are_walked_exactly() -> None:
    # Every record alike (step 0, value 1.0): a lane started mid-record can follow its own
    # lengths forever; the result must still be the records.
    data = encode_record(STAMP, 0, 1.0, b"loss") * 5000
    starts, stop = fastscan.find_starts(fastscan.Buffer(data))
    assert stop == len(data)
    assert np.array_equal(starts, np.arange(0, len(data), 25))


def test_names_are_grouped_exactly_beyond_the_numpy_width() -> None:
    names = [b"x" * 200, b"x" * 199 + b"y", b"short"]
    data = b"".join(encode_record(STAMP, i, 0.5, names[i % 3]) for i in range(300))
    buf = fastscan.Buffer(data)
    starts, _ = fastscan.find_starts(buf)
    parsed = fastscan.parse(buf, starts)
    assert parsed.names == names
    assert parsed.group.tolist() == [i % 3 for i in range(300)]


# -- the first pass's fast path: buffers repeating one layout -------------------------------

LOW, HIGH = MIN_TIMESTAMP, MAX_TIMESTAMP - 1


def cycle(layout: list[tuple[bytes, int]], n: int, first: int = 0) -> bytes:
    """`n` records repeating `layout` (name, timestamp), steps from `first`."""
    return b"".join(
        encode_record(layout[i % len(layout)][1], i, i / 7, layout[i % len(layout)][0])
        for i in range(first, first + n)
    )


def cycled(*names: bytes) -> list[tuple[bytes, int]]:
    return [(name, STAMP) for name in names]


TEN = cycled(*(f"metric/{i:03d}".encode() for i in range(10)))


def swapped(at: int, name: bytes, ts: int = STAMP) -> bytes:
    """9,000 records cycling TEN names, record `at` made of `name` and `ts` instead."""
    return cycle(TEN, at) + cycle([(name, ts)], 1, at) + cycle(TEN, 8999 - at, at + 1)


WIDE = [bytes([33 + i % 90]) * (1 + i * 37 % 255) for i in range(100)]

ODD_FILES: dict[str, bytes] = {
    "one name": cycle(cycled(b"loss"), 9000),
    "a name twice a cycle": cycle(cycled(b"loss", b"acc", b"loss", b"lr"), 9000),
    "long names": cycle(cycled(b"x" * 255, b"y", b"z" * 254), 5000),
    "names that look like lengths": cycle(cycled(bytes([21]) * 30, bytes([25, 4]), b"\x7f"), 9000),
    "timestamps at the edges": cycle([(b"loss", LOW), (b"acc", HIGH)], 9000),
    "more names than a cycle holds": cycle(cycled(*WIDE), 5000),
    "a record off the cycle": cycle(TEN, 5000) + cycle(cycled(b"eval"), 1) + cycle(TEN, 4000),
    "another name of one length": swapped(5000, b"metric/00x"),
    "a timestamp too late": swapped(7000, b"metric/000", HIGH + 1),
    "a timestamp too early": swapped(7000, b"metric/000", LOW - 1),
    "0x00 in a name": swapped(7000, b"metric/0\x000"),
    "an empty name": cycle(TEN, 7000) + cycle(cycled(b""), 1) + cycle(TEN, 2000),
    "an empty name in every cycle": cycle(cycled(b"loss", b""), 9000),
    "torn in a name": cycle(TEN, 9000)[:-3],
    "torn in a head": cycle(TEN, 9000) + cycle(TEN, 1)[:9],
}


@pytest.mark.parametrize("read_bytes", [1 << 12, indexer.READ_BYTES], ids=["4 KiB", "default"])
@pytest.mark.parametrize("odd", list(ODD_FILES))
def test_the_first_pass_is_exact_on_odd_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, odd: str, read_bytes: int
) -> None:
    monkeypatch.setattr(indexer, "READ_BYTES", read_bytes)
    monkeypatch.setattr(indexer, "SYNC_BYTES", read_bytes)  # syncs in the background too
    data = ODD_FILES[odd]
    directory = experiment(tmp_path, data)
    cp, end, count = build(directory)
    valid = scan(data)
    assert (end, count) == (valid.end, valid.records)
    assert (cp.end, cp.count) == (end, count)
    expected = expected_columns(data)
    assert columns(directory, cp) == expected
    assert [info.name for info in cp.names] == list(expected)
    starts, _ = fastscan._walk(data[:end])
    anchors = np.fromfile(directory / "index" / "anchors", "<u8")
    assert anchors.tolist() == starts[:: sidecar.ANCHOR].tolist() and cp.anchors == len(anchors)


@pytest.mark.parametrize("seed", range(200 if os.environ.get("FETCHML_LONG") else 12))
def test_the_first_pass_is_exact_on_cycles_broken_at_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    print(f"seed {seed}")
    names = [
        bytes(
            rng.choice(b"ab\x15\x00" if rng.random() < 0.02 else b"abcdefgh\x15") for _ in range(n)
        )
        for n in rng.choices([1, 2, 3, 10, 200], k=rng.randrange(1, 8))
    ]
    layout = cycled(*rng.choices(names, k=rng.randrange(1, 12)))
    parts, steps = [], 0
    for _ in range(rng.randrange(1, 6)):
        n = rng.randrange(3000)
        parts.append(cycle(layout, n, steps))
        steps += n
        if rng.random() < 0.3:
            ts = rng.choice([STAMP, MIN_TIMESTAMP - 1, MAX_TIMESTAMP, 5])
            parts.append(encode_record(ts, 0, 0.0, rng.choice([*names, b"", b"zz"])))
    data = b"".join(parts)
    if rng.random() < 0.3:
        data = data[: rng.randrange(len(data) + 1)]
    monkeypatch.setattr(indexer, "READ_BYTES", rng.choice([64, 300, 4096, 1 << 16]))
    monkeypatch.setattr(indexer, "SYNC_BYTES", rng.choice([1, 64 << 20]))
    directory = experiment(tmp_path, data)
    cp, end, count = build(directory)
    valid = scan(data)
    assert (end, count) == (valid.end, valid.records)
    assert columns(directory, cp) == expected_columns(data)
    starts, _ = fastscan._walk(data[:end])
    anchors = np.fromfile(directory / "index" / "anchors", "<u8")
    assert anchors.tolist() == starts[:: sidecar.ANCHOR].tolist()


def test_a_buffer_of_one_layout_is_taken_as_its_whole_cycles() -> None:
    data = cycle(TEN, 1005)
    cycles = fastscan.periodic(data)
    assert cycles is not None
    assert cycles.names == [name for name, _ in TEN]
    assert (len(cycles.table), cycles.size) == (100, len(cycle(TEN, 10)))
    decoded = decode_records(data[: 100 * cycles.size])
    for j, name in enumerate(cycles.names):
        assert cycles.offsets[j] == sum(21 + len(n) for n in cycles.names[:j])
        mine = decoded[j::10]
        assert all(r.name.encode() == name for r in mine)
        assert cycles.table[f"ts{j}"].tolist() == [r.timestamp for r in mine]
        assert cycles.table[f"step{j}"].tolist() == [r.step for r in mine]
        assert cycles.table[f"value{j}"].tolist() == [r.value for r in mine]


@pytest.mark.parametrize(
    "odd",
    [
        "more names than a cycle holds",
        "another name of one length",
        "a timestamp too late",
        "a timestamp too early",
        "0x00 in a name",
        "an empty name in every cycle",
    ],
)
def test_a_buffer_off_its_layout_is_left_to_the_search(odd: str) -> None:
    # Each breaks the layout after the records it is read from.
    assert fastscan.periodic(ODD_FILES[odd]) is None


def test_sidecars_are_extended_by_what_was_appended(tmp_path: Path) -> None:
    data = records(5000)
    directory = experiment(tmp_path, data)
    build(directory)
    more = records(3000, seed=2, names=(b"loss", b"new/name"))
    with open(directory / "metrics.bin", "ab") as f:
        f.write(more)
    end, count, cp = resume(directory)
    assert (end, count) == (len(data + more), 8000)
    assert cp is not None and cp.count == 8000
    assert columns(directory, cp) == expected_columns(data + more)
    assert trusted(directory) == (cp, None)


# -- every way a sidecar can lie -----------------------------------------------------------


def _replace_file(directory: Path) -> None:
    path = directory / "metrics.bin"
    copy = path.with_name("copy")
    shutil.copyfile(path, copy)
    os.replace(copy, path)  # the same bytes under another inode


def _shorter(directory: Path) -> None:
    os.truncate(directory / "metrics.bin", 25 * 100)


def _changed_bytes(directory: Path) -> None:
    path = directory / "metrics.bin"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside a value near the end: still a valid file
    path.write_bytes(bytes(data))


def _truncated_checkpoint(directory: Path) -> None:
    path = directory / "index" / "checkpoint"
    os.truncate(path, path.stat().st_size - 5)


def _wrong_version(directory: Path) -> None:
    path = directory / "index" / "checkpoint"
    data = bytearray(path.read_bytes())
    struct.pack_into(">H", data, 6, 99)
    path.write_bytes(bytes(data))


def _garbage(directory: Path) -> None:
    (directory / "index" / "checkpoint").write_bytes(random.Random(1).randbytes(500))


def _short_column(directory: Path) -> None:
    os.truncate(directory / "index" / "1.col", 28 * 3)


def _missing_anchors(directory: Path) -> None:
    os.unlink(directory / "index" / "anchors")


def _index_is_a_file(directory: Path) -> None:
    shutil.rmtree(directory / "index")
    (directory / "index").write_bytes(b"not a directory")


LIES: dict[str, tuple[Callable[[Path], None], str]] = {
    "wrong inode": (_replace_file, "metrics.bin was replaced"),
    "shorter file": (_shorter, "metrics.bin is shorter"),
    "changed bytes": (_changed_bytes, "bytes before the checkpoint changed"),
    "truncated sidecar": (_truncated_checkpoint, "checksum mismatch"),
    "wrong version": (_wrong_version, "format version 99, not 1"),
    "garbage": (_garbage, "not a checkpoint"),
    "short column": (_short_column, "1.col is shorter"),
    "missing anchors": (_missing_anchors, "anchors is missing"),
    "index is a file": (_index_is_a_file, "index"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_lying_sidecar_is_ignored_and_rebuilt(tmp_path: Path, lie: str) -> None:
    data = records(9000)
    directory = experiment(tmp_path, data)
    build(directory)
    damage, reason = LIES[lie]
    damage(directory)
    cp, why = trusted(directory)
    assert cp is None and why is not None and reason in why
    end, count, rebuilt = resume(directory)  # what a first open does
    now = (directory / "metrics.bin").read_bytes()
    assert (end, count) == (scan(now).end, scan(now).records)
    assert rebuilt is not None and (rebuilt.end, rebuilt.count) == (end, count)
    assert columns(directory, rebuilt) == expected_columns(now)
    assert trusted(directory) == (rebuilt, None)


def test_damaged_column_rows_fail_their_check(tmp_path: Path) -> None:
    directory = experiment(tmp_path, records(3000))
    cp, _, _ = build(directory)
    path = directory / "index" / "2.col"
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF  # a row's timestamp: the sizes still match the checkpoint
    path.write_bytes(bytes(data))
    assert trusted(directory) == (cp, None)  # a checkpoint is cheap to trust ...
    with pytest.raises(sidecar.Unusable, match=r"2\.col does not match"):
        sidecar.check_rows(directory, 2, cp.names[2])  # ... its columns are checked on use
    with pytest.raises(sidecar.Unusable, match="anchors do not match"):
        anchors = directory / "index" / "anchors"
        anchors.write_bytes(b"\xff" * anchors.stat().st_size)
        sidecar.anchor(directory, cp, set(), 0)


def test_a_checkpoint_round_trips_and_names_its_version() -> None:
    cp = Checkpoint(1, 2, 3, 4, bytes(32), (), 0, 0)
    data = sidecar.encode(cp)
    assert data.startswith(b"FMLIDX\x00\x01")
    assert sidecar.decode(data) == cp
    with pytest.raises(sidecar.Unusable, match="trailing bytes"):
        body = data[:-32] + b"x"
        sidecar.decode(body + hashlib.sha256(body).digest())


def test_the_first_pass_keeps_up_with_a_big_file(tmp_path: Path) -> None:
    """The first pass over 1,000,000 records (ten names), printed; with FETCHML_LONG=1 also
    20,000,000. The rate target (5,000,000 records/s) is the benchmark's to show."""
    sizes = [1_000_000] + ([20_000_000] if os.environ.get("FETCHML_LONG") else [])
    names = tuple(f"metric/{i:03d}".encode() for i in range(10))
    for n in sizes:
        directory = make_experiment(tmp_path / str(n), "cd" * 20, big_metrics(n, names)).parent
        start = os.times().elapsed
        cp, _, count = build(directory)
        seconds = os.times().elapsed - start
        print(f"first pass: {n} records in {seconds:.2f} s, {n / seconds / 1e6:.1f} M records/s")
        assert count == n and cp.count == n and len(cp.names) == 10


@pytest.mark.parametrize("seed", range(4))
def test_lttb_a_window_at_a_time_is_lttb_and_holds_a_window(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(500, 5000))
    xs = np.sort(rng.integers(0, 10 * n, n)).astype(np.uint32)
    ys = rng.normal(size=n)
    ys[rng.integers(0, n, 5)] = np.nan
    loaded: list[int] = []

    def load(lo: int, hi: int) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float64]]:
        loaded.append(hi - lo)
        return xs[lo:hi], ys[lo:hi]

    for threshold in (3, 40, 300, n - 1):
        loaded.clear()
        bucket = -(-(n - 2) // (threshold - 2)) + 1
        assert series.lttb_windows(n, threshold, load, window=64) == series.lttb(xs, ys, threshold)
        assert max(loaded) <= max(64, bucket)


@pytest.mark.parametrize("seed", range(4))
def test_lttb_a_window_at_a_time_is_the_reference_lttb(seed: int) -> None:
    """Windows of a few buckets, in one pass, choose what the paper's LTTB chooses."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(500, 3000))
    xs = np.sort(rng.integers(0, 10 * n, n)).astype(np.uint32)
    ys = rng.normal(size=n)
    points = list(zip(xs.tolist(), ys.tolist(), strict=True))
    for threshold in (3, 4, 40, 300, n // 2):
        expected = reference_lttb(points, threshold)
        for window in (1, 64, 1000, n):
            got = series.lttb_windows(n, threshold, lambda lo, hi: (xs[lo:hi], ys[lo:hi]), window)
            assert got == expected, (threshold, window)


async def test_appends_extend_the_sidecars_in_the_background(tmp_path: Path) -> None:
    commit = "ef" * 20
    async with ExperimentStore(tmp_path, index_bytes=4096) as store:
        await store.create(Metadata(commit_id=commit, timestamp=1764000000, user="alice"))
        for i in range(10):
            await store.append(commit, records(200, seed=i), 200)  # no read, no query

        def covered() -> int:
            cp = sidecar.load(tmp_path / commit)
            return cp.count if cp else 0

        await poll(lambda: covered() >= 1800, "the sidecars to cover the appends")
    cp = sidecar.load(tmp_path / commit)
    assert cp is not None
    data = (tmp_path / commit / "metrics.bin").read_bytes()
    assert columns(tmp_path / commit, cp) == expected_columns(data[: cp.end])


def test_fsck_reports_stale_sidecars_and_repair_writes_them_again(tmp_path: Path) -> None:
    directory = experiment(tmp_path, records(5000))
    build(directory)
    out = io.StringIO()
    assert tools.fsck(tmp_path, repair=False, out=out) == 0
    assert "sidecars" not in out.getvalue()
    inspected = io.StringIO()
    tools.inspect(tmp_path, None, as_json=False, out=inspected)
    assert "  sidecars: 5000 records" in inspected.getvalue()
    _changed_bytes(directory)
    out = io.StringIO()
    assert tools.fsck(tmp_path, repair=False, out=out) == 1
    assert f"{directory.name}: sidecars stale or damaged: metrics.bin's bytes" in out.getvalue()
    out = io.StringIO()
    assert tools.fsck(tmp_path, repair=True, out=out) == 1
    assert f"{directory.name}: repaired: sidecars rebuilt (5000 records)" in out.getvalue()
    assert tools.fsck(tmp_path, repair=False, out=io.StringIO()) == 0
    os.truncate(directory / "index" / "0.col", 10)
    inspected = io.StringIO()
    tools.inspect(tmp_path, None, as_json=False, out=inspected)
    assert "  sidecars: ignored (0.col is shorter" in inspected.getvalue()


async def test_without_sidecars_queries_read_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(indexer, "MAX_NAMES", 2)  # four names: the sidecars cannot be written
    commit = "fe" * 20
    data = records(3000)
    make_experiment(tmp_path, commit, data)
    cid = bytes.fromhex(commit)
    async with ExperimentStore(tmp_path, index_bytes=1024) as store:
        assert await store.count(commit) == 3000
        cache = SeriesCache(store)
        page = decode_metrics_payload(
            await query_page(
                store,
                cache,
                QueryMetrics(
                    key_hash=bytes(16), commit_id=cid, name="lr", step_from=10, step_to=99
                ),
                1 << 20,
            )
        )
        latest = decode_metrics_payload(
            await query_page(
                store, cache, QueryMetrics(key_hash=bytes(16), commit_id=cid, max_points=2), 1 << 20
            )
        )
    everything = decode_records(data)
    assert list(page.records) == [r for r in everything if r.name == "lr" and 10 <= r.step <= 99]
    by_name: dict[str, list[MetricRecord]] = {}
    for r in everything:
        by_name.setdefault(r.name, []).append(r)
    assert list(latest.records) == [r for rs in by_name.values() for r in (rs[0], rs[-1])]
    assert "sidecars not written: more than 2 names" in caplog.text
    assert caplog.text.count("sidecars not") == 1  # tried once, not on every read
    assert sidecar.load(tmp_path / commit) is None


@pytest.mark.parametrize("seed", range(3))
def test_a_read_from_an_anchor_gives_whole_records_within_its_bounds(
    tmp_path: Path, seed: int
) -> None:
    """Pages read from an anchor (records found with numpy) are the records a walk of the
    file finds, cut by max_bytes and stop as before; names of any length, in any order."""
    rng = random.Random(seed)
    names = [bytes(rng.choice(b"abcxyz_/") for _ in range(rng.randint(1, 40))) for _ in range(7)]
    records = [encode_record(STAMP, i, i / 3, rng.choice(names)) for i in range(20_000)]
    data = b"".join(records)
    (tmp_path / "metrics.bin").write_bytes(data)
    bounds = [0]
    for r in records:
        bounds.append(bounds[-1] + len(r))
    for _ in range(40):
        first = rng.randrange(0, 20_000, 4096)
        start = rng.randrange(first, 20_000)
        stop = rng.randrange(start + 1, 20_001)
        max_bytes = rng.randint(1, 300_000)
        chunk = offsets.read_anchored(
            tmp_path, bounds[first], first, len(data), start, max_bytes, stop, 20_000
        )
        fits = max(i for i in range(start, stop + 1) if bounds[i] - bounds[start] <= max_bytes)
        take = max(1, fits - start)
        assert (chunk.start, chunk.records) == (start, take)
        assert chunk.data == data[bounds[start] : bounds[start + take]]


def test_skipping_to_a_page_from_its_anchor_reads_about_what_the_skipped_records_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paging all names reads each page from the anchor before it: the records skipped on
    the way are read with room to spare (twice the file's mean record size), not a whole
    read chunk (4 MiB) of what follows the anchor, each byte of it scanned for records."""
    records = [encode_record(STAMP, i, i / 3, b"loss" if i % 2 else b"acc") for i in range(100_000)]
    data = b"".join(records)
    (tmp_path / "metrics.bin").write_bytes(data)
    bounds = [0]
    for r in records:
        bounds.append(bounds[-1] + len(r))
    read: list[int] = []
    pread = os.pread

    def counted(fd: int, size: int, at: int) -> bytes:
        read.append(size)
        return pread(fd, size, at)

    monkeypatch.setattr(os, "pread", counted)
    chunk = offsets.read_anchored(
        tmp_path, bounds[8192], 8192, len(data), 12_000, 1_000, 12_100, 100_000
    )
    assert chunk.data == data[bounds[12_000] : bounds[12_000] + len(chunk.data)] and chunk.records
    skipped = bounds[12_000] - bounds[8192]
    print(f"skipped {skipped:,} bytes; read {sum(read):,} in {len(read)} reads")
    assert sum(read[:-1]) <= 3 * skipped
