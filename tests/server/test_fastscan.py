"""The numpy scan of the first pass (fastscan.py) on records of names in any order: the
records it finds and their names equal a walk's and a Python grouping's, on buffers made
to mislead it (zero bytes everywhere a timestamp's could be, damaged bytes, cut records)."""

import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetchml.protocol.enums import Opcode
from fetchml.protocol.metrics import (
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    RECORD_MIN,
    encode_record,
    records_at,
    scan,
)
from fetchml.protocol.requests import LOG_METRICS_HEAD, log_metrics_at_head
from fetchml.server import batches, fastscan
from fetchml.server.fastscan import REPEATING_AT_MIN
from tests.support.experiments import STAMP

NAMES = (b"loss", b"accuracy", b"learning_rate", b"grad_norm", b"val_loss", b"gpu_util")


def shuffled(n: int, seed: int = 0, names: tuple[bytes, ...] = NAMES) -> bytes:
    rng = random.Random(seed)
    return b"".join(
        encode_record(STAMP + i // 100, i, rng.random(), rng.choice(names)) for i in range(n)
    )


def test_records_in_random_order_are_found_without_a_walk() -> None:
    data = shuffled(20_000)
    buf = fastscan.Buffer(data + data[:17])  # and a record cut at the end
    found = fastscan._chained(buf)
    assert found is not None
    starts, stop = found
    walked, walked_stop = fastscan._walk(buf.data)
    assert stop == walked_stop == len(data)
    assert np.array_equal(starts, walked)


def test_a_buffer_with_an_invalid_timestamp_is_left_to_the_walk() -> None:
    data = bytearray(shuffled(5_000))
    walked, _ = fastscan._walk(bytes(data))
    at = int(walked[len(walked) // 2])
    data[at : at + 8] = (1).to_bytes(8, "big")  # a record with an implausible timestamp
    buf = fastscan.Buffer(bytes(data))
    assert fastscan._chained(buf) is None
    starts, stop = fastscan.find_starts(buf)
    walked, walked_stop = fastscan._walk(buf.data)
    assert np.array_equal(starts, walked) and stop == walked_stop


def test_names_sharing_a_hash_are_told_apart_by_their_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fastscan, "_MIX", np.zeros(8, dtype=np.uint64))  # hash = length
    names = [b"abc", b"xyz", b"abcdefghij", b"abcdefghik"]
    data = b"".join(encode_record(STAMP, i, 0.5, names[i * 7 % 4]) for i in range(400))
    buf = fastscan.Buffer(data)
    parsed = fastscan.parse(buf, fastscan.find_starts(buf)[0])
    expected = [names[i * 7 % 4] for i in range(400)]
    assert parsed.names == list(dict.fromkeys(expected))  # in order of first appearance
    assert [parsed.names[g] for g in parsed.group] == expected
    assert parsed.plain


def test_hashes_whose_top_bits_agree_are_placed_by_a_search() -> None:
    known = np.array([1, 2, 3 << 60], dtype=np.uint64)
    hashes = np.array([3 << 60, 1, 2, 2], dtype=np.uint64)
    assert fastscan._positions(known, hashes).tolist() == [2, 0, 1, 1]


# Records whose fields hold runs of zero bytes, so that many offsets inside them look like
# the start of a record: a timestamp whose low byte is 0, steps 0..3, values 0.0.
name_st = st.one_of(st.sampled_from(NAMES), st.binary(min_size=0, max_size=70))
record_st = st.tuples(
    st.sampled_from([STAMP & ~0xFF, STAMP, MIN_TIMESTAMP, MAX_TIMESTAMP - 1, 7]),
    st.sampled_from([0, 1, 3, 0x3FF00000, 2**32 - 1]),
    st.sampled_from([0.0, 1.0, -0.5, 2.5e-300]),
    name_st,
)
damage_st = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3)


def build(records: list[tuple[int, int, float, bytes]], damage: list[tuple[int, int]]) -> bytes:
    data = bytearray(b"".join(encode_record(*r) for r in records))
    for at, byte in damage:
        if data:
            data[at % len(data)] = byte
    return bytes(data)


@settings(max_examples=150, deadline=None)
@given(st.lists(record_st, min_size=0, max_size=400), damage_st, st.integers(0, 40))
def test_found_records_and_names_equal_a_walk_and_a_python_grouping(
    records: list[tuple[int, int, float, bytes]], damage: list[tuple[int, int]], cut: int
) -> None:
    data = build(records, damage)
    data = data[: max(0, len(data) - cut)]
    buf = fastscan.Buffer(data)
    walked, walked_stop = fastscan._walk(data)
    chained = fastscan._chained(buf)
    if chained is not None:
        assert np.array_equal(chained[0], walked) and chained[1] == walked_stop
    starts, stop = fastscan.find_starts(buf)
    assert np.array_equal(starts, walked) and stop == walked_stop
    parsed = fastscan.parse(buf, starts)
    names: dict[bytes, int] = {}
    group = [
        names.setdefault(data[a + RECORD_MIN : a + RECORD_MIN + data[a + 20]], len(names))
        for a in walked.tolist()
    ]
    assert parsed.names == list(names)
    assert parsed.group.tolist() == group
    plain = all(
        MIN_TIMESTAMP <= struct.unpack_from(">Q", data, a)[0] < MAX_TIMESTAMP
        and data[a + 20] > 0
        and 0 not in data[a + RECORD_MIN : a + RECORD_MIN + data[a + 20]]
        for a in walked.tolist()
    )
    assert parsed.plain == plain


@settings(max_examples=60, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=300), damage_st)
def test_a_read_gives_the_valid_prefix_a_scan_gives(
    records: list[tuple[int, int, float, bytes]], damage: list[tuple[int, int]]
) -> None:
    data = build(records, damage)
    batch, end, incomplete = batches.general(data, 0, 0)
    result = scan(data)
    assert (end, batch.records) == (result.end, result.records)
    assert incomplete or not result.incomplete  # (it may read on where a scan would stop)


# -- LOG_METRICS_AT whose records repeat one layout (repeating_at) --------------------------

AT_KEY, AT_COMMIT = bytes(range(16)), bytes(range(20))


def at_message(records: bytes, count: int) -> bytes:
    return log_metrics_at_head(AT_KEY, AT_COMMIT, count) + records


def cycled(n: int, names: tuple[bytes, ...], stamp: int = STAMP) -> bytes:
    return b"".join(encode_record(stamp + i, i, i * 0.5, names[i % len(names)]) for i in range(n))


def test_repeating_records_are_taken_apart_as_records_at_does() -> None:
    one, three = cycled(300, (b"loss",)), cycled(300, (b"loss", b"acc", b"learning_rate"))
    for records in (one, three):
        wire = at_message(records, 300)
        assert fastscan.repeating_at(wire) == records_at(wire) is not None
        assert records_at(wire) == (AT_KEY, AT_COMMIT, records, 300, STAMP + 299)


@pytest.mark.parametrize(
    ("case", "valid"),
    [
        ("too few records", True),
        ("a count that is not the records'", False),
        ("a record more than whole cycles", True),
        ("a name out of the layout", True),
        ("a name of bad UTF-8", False),
        ("a timestamp out of range", False),
        ("another opcode", False),
    ],
)
def test_other_messages_are_left_to_records_at(case: str, valid: bool) -> None:
    records, count = cycled(300, (b"loss", b"acc")), 300
    if case == "too few records":
        records, count = cycled(REPEATING_AT_MIN - 1, (b"loss",)), REPEATING_AT_MIN - 1
    elif case == "a count that is not the records'":
        count = 298
    elif case == "a record more than whole cycles":
        records, count = records + encode_record(STAMP, 0, 0.0, b"loss"), 301
    elif case == "a name out of the layout":
        records = cycled(299, (b"loss", b"acc")) + encode_record(STAMP, 0, 0.0, b"lr_")
    elif case == "a name of bad UTF-8":
        records = cycled(300, (b"lo\xc3",))
    elif case == "a timestamp out of range":
        records = cycled(300, (b"loss",), stamp=MAX_TIMESTAMP - 100)
    wire = at_message(records, count)
    if case == "another opcode":
        wire = bytes([Opcode.LOG_METRICS]) + wire[1:]
    assert fastscan.repeating_at(wire) is None
    assert (records_at(wire) is not None) == valid


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from((b"loss", b"acc", b"lr", b"\xc3", b"x" * 40)), min_size=1, max_size=4),
    st.integers(REPEATING_AT_MIN, 700),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=2),
)
def test_repeating_at_agrees_with_records_at(
    names: list[bytes], n: int, damage: list[tuple[int, int]]
) -> None:
    wire = bytearray(at_message(cycled(n, tuple(names)), n))
    for at, byte in damage:
        wire[LOG_METRICS_HEAD + at % (len(wire) - LOG_METRICS_HEAD)] = byte
    fast = fastscan.repeating_at(bytes(wire))
    assert fast is None or fast == records_at(bytes(wire))
