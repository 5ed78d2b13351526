"""metrics.bin records (the validity rule of PROTOCOL.md section 1) and meta.bin."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.errors import MalformedRecord, ProtocolError
from fetchml.protocol.metrics import (
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    RECORD_MAX,
    RECORD_MIN,
    MetricRecord,
    ScanResult,
    decode_records,
    encode_record,
    iter_records,
    scan,
)
from fetchml.protocol.records import Metadata, decode_metadata, encode_metadata

FUZZ = settings(max_examples=200, deadline=None)

TS = 1795735109


def rec(name: bytes = b"loss", timestamp: int = TS, step: int = 0, value: float = 1.0) -> bytes:
    return encode_record(timestamp, step, value, name)


def metadata_rejected(data: bytes) -> str:
    with pytest.raises(MalformedRecord) as info:
        decode_metadata(data)
    assert info.value.code is ErrorCode.STORAGE_ERROR
    return info.value.message


def records_rejected(data: bytes, *bounds: int) -> str:
    with pytest.raises(MalformedRecord) as info:
        iter_records(data, *bounds)
    assert info.value.code is ErrorCode.STORAGE_ERROR
    return info.value.message


def test_constants() -> None:
    assert (RECORD_MIN, RECORD_MAX) == (21, 276)
    assert MIN_TIMESTAMP == 946684800
    assert MAX_TIMESTAMP == 2**32


def test_record_layout() -> None:
    raw = encode_record(TS, 0xFFFFFFFF, -2.5, b"acc")
    assert raw == struct.pack(">QIdB", TS, 0xFFFFFFFF, -2.5, 3) + b"acc"


# --- scan: valid prefixes --------------------------------------------------------------------


def test_scan_empty_buffer() -> None:
    # The walk is at the end of the buffer: more bytes may add records.
    assert scan(b"") == ScanResult(0, 0, True)


def test_scan_valid_records() -> None:
    buf = rec(b"loss") + rec(b"acc", step=1) + rec(b"x" * 255, step=2)
    assert scan(buf) == ScanResult(len(buf), 3, True)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_scan_accepts_buffer_types(kind: type[bytes | bytearray | memoryview]) -> None:
    buf = rec() + rec()
    assert scan(kind(buf)) == ScanResult(50, 2, True)


def test_scan_accepts_any_non_nul_name_bytes() -> None:
    buf = rec(b"\xff\xfe") + rec(b"\xc3")
    assert scan(buf) == ScanResult(len(buf), 2, True)


@pytest.mark.parametrize(
    ("timestamp", "valid"),
    [
        (0, False),
        (MIN_TIMESTAMP - 1, False),
        (MIN_TIMESTAMP, True),
        (TS, True),
        (2**32 - 1, True),
        (2**32, False),
        (2**63, False),
        (2**64 - 1, False),
    ],
)
def test_scan_timestamp_bounds(timestamp: int, valid: bool) -> None:
    good = rec(b"first")
    buf = good + rec(timestamp=timestamp) + rec(b"after")
    if valid:
        assert scan(buf) == ScanResult(len(buf), 3, True)
    else:
        assert scan(buf) == ScanResult(len(good), 1, False)


@pytest.mark.parametrize("name", [b"\x00", b"lo\x00ss", b"loss\x00", b"\x00" * 255])
def test_scan_name_with_nul_ends_prefix(name: bytes) -> None:
    good = rec(b"first")
    assert scan(good + rec(name) + rec(b"after")) == ScanResult(len(good), 1, False)


def test_scan_empty_name_followed_by_valid_record_is_valid() -> None:
    buf = rec(b"a") + rec(b"") + rec(b"") + rec(b"b")
    assert scan(buf) == ScanResult(len(buf), 4, True)
    assert scan(rec(b"") + rec(b"b")) == ScanResult(43, 2, True)


def test_scan_trailing_empty_names_are_not_in_prefix() -> None:
    # The walk ran to the end: a named record appended later would take them in.
    good = rec(b"a")
    assert scan(good + rec(b"")) == ScanResult(len(good), 1, True)
    assert scan(good + rec(b"") * 3) == ScanResult(len(good), 1, True)
    assert scan(rec(b"") * 2) == ScanResult(0, 0, True)


@pytest.mark.parametrize(
    "stopper",
    [rec(timestamp=0), rec(b"\x00"), b"\x00" * 64, rec(b"", timestamp=5)],
    ids=["bad-timestamp", "nul-name", "zeros", "bad-empty"],
)
def test_scan_empty_name_followed_by_invalid_record(stopper: bytes) -> None:
    good = rec(b"a")
    buf = good + rec(b"") + stopper + rec(b"b")
    assert scan(buf) == ScanResult(len(good), 1, False)


def test_scan_empty_name_followed_by_cut_record() -> None:
    good = rec(b"a")
    buf = good + rec(b"") + rec(b"b")[:-1]
    assert scan(buf) == ScanResult(len(good), 1, True)


def test_scan_record_cut_by_crash_and_zero_filled() -> None:
    # PROTOCOL.md: a record cut after its timestamp and zero-filled reads as an
    # empty name with nothing valid after it.
    good = rec(b"a")
    torn = struct.pack(">Q", TS) + b"\x00" * 4096
    assert scan(good + torn) == ScanResult(len(good), 1, False)


def test_scan_record_cut_after_name_length_and_zero_filled() -> None:
    good = rec(b"a")
    torn = rec(b"abcdef")[:21] + b"\x00" * 4096
    assert scan(good + torn) == ScanResult(len(good), 1, False)


# --- scan: cuts, zero tails, the incomplete flag ---------------------------------------------

RECORDS = [rec(b"loss"), rec(b"", step=1), rec(b"accuracy", step=2), rec(b"x" * 255, step=3)]
BUF = b"".join(RECORDS)
BOUNDARIES = [sum(len(r) for r in RECORDS[:i]) for i in range(len(RECORDS) + 1)]


def test_scan_cut_at_every_offset() -> None:
    for cut in range(len(BUF) + 1):
        # The prefix ends after the last complete record with a non-empty name.
        complete = [i for i, b in enumerate(BOUNDARIES) if b <= cut][-1]
        while complete and RECORDS[complete - 1][20] == 0:
            complete -= 1
        # Every cut either ends at a boundary or inside a record more bytes complete.
        expected = ScanResult(BOUNDARIES[complete], complete, True)
        assert scan(BUF[:cut]) == expected, f"cut at {cut}"


@pytest.mark.parametrize("zeros", [1, 4, 5, 7, 8, 20, 21, 22, 100, 4096])
def test_scan_zero_filled_tail(zeros: int) -> None:
    # Every plausible timestamp starts with four zero bytes, so up to four zeros may
    # still be the start of a record; a fifth zero rules that out.
    assert scan(BUF + b"\x00" * zeros) == ScanResult(len(BUF), 4, zeros <= 4)


@pytest.mark.parametrize("fill", [b"\xff", b"\x01"])
@pytest.mark.parametrize("size", [1, 4, 8, 20, 21, 300])
def test_scan_implausible_tail(fill: bytes, size: int) -> None:
    assert scan(BUF + fill * size) == ScanResult(len(BUF), 4, False)


@pytest.mark.parametrize("size", range(1, 21))
def test_scan_cut_head_incomplete_depends_on_timestamp_bytes(size: int) -> None:
    good = rec(b"a")
    plausible = rec(b"b")[:size]
    assert scan(good + plausible) == ScanResult(len(good), 1, True)
    implausible = struct.pack(">Q", MIN_TIMESTAMP - 1) + b"\x00" * 13
    assert scan(good + implausible[:size]).incomplete is (size < 8)
    too_late = struct.pack(">Q", MAX_TIMESTAMP) + b"\x00" * 13
    assert scan(good + too_late[:size]).incomplete is (size < 4)


def test_scan_cut_name_with_nul_is_not_incomplete() -> None:
    good = rec(b"a")
    assert scan(good + rec(b"ab\x00cdef")[:-2]) == ScanResult(len(good), 1, False)
    assert scan(good + rec(b"abcdef")[:-2]) == ScanResult(len(good), 1, True)


def test_scan_start() -> None:
    first, second = rec(b"a"), rec(b"b", step=1)
    buf = first + second + rec(b"")
    assert scan(buf, start=len(first)) == ScanResult(len(buf) - 21, 1, True)
    assert scan(buf, start=len(buf)) == ScanResult(len(buf), 0, True)
    assert scan(buf + second[:10], start=len(buf)) == ScanResult(len(buf), 0, True)
    # A start inside a record reads garbage, which ends the prefix at once.
    assert scan(buf, start=1) == ScanResult(1, 0, False)


# --- scan: properties ------------------------------------------------------------------------

valid_names = st.binary(max_size=40).map(lambda name: name.replace(b"\x00", b"."))
valid_records = st.builds(
    encode_record,
    st.integers(MIN_TIMESTAMP, MAX_TIMESTAMP - 1),
    st.integers(0, 0xFFFFFFFF),
    st.floats(),
    valid_names,
)


def expected_prefix(records: list[bytes]) -> ScanResult:
    """Scan of a list of valid records: up to the last one with a non-empty name.

    The walk reaches the end of the buffer, so the result is incomplete.
    """
    named = [i for i, r in enumerate(records) if r[20] > 0]
    count = named[-1] + 1 if named else 0
    return ScanResult(sum(len(r) for r in records[:count]), count, True)


@FUZZ
@given(st.lists(valid_records, max_size=12))
def test_scan_valid_records_property(records: list[bytes]) -> None:
    buf = b"".join(records)
    expected = expected_prefix(records)
    assert scan(buf) == expected
    decoded = iter_records(buf, 0, expected.end)
    assert len(decoded) == expected.records
    assert [offset for offset, _ in decoded] == [
        sum(len(r) for r in records[:i]) for i in range(expected.records)
    ]


@FUZZ
@given(records=st.lists(valid_records, max_size=8), tail=valid_records, data=st.data())
def test_scan_cut_tail_property(records: list[bytes], tail: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(1, len(tail) - 1), label="cut")
    result = scan(b"".join(records) + tail[:cut])
    assert result == expected_prefix(records)._replace(incomplete=True)


STOPPERS = st.one_of(
    st.integers(1, 300).map(lambda n: b"\x00" * n),
    st.integers(0, MIN_TIMESTAMP - 1).map(lambda ts: rec(timestamp=ts)),
    st.integers(MAX_TIMESTAMP, 2**64 - 1).map(lambda ts: rec(timestamp=ts)),
    st.binary(min_size=1, max_size=40).map(lambda name: rec(b"a" + name + b"\x00")),
)


@FUZZ
@given(records=st.lists(valid_records, max_size=8), stopper=STOPPERS, after=valid_records)
def test_scan_stopper_property(records: list[bytes], stopper: bytes, after: bytes) -> None:
    result = scan(b"".join(records) + stopper + after)
    assert result == expected_prefix(records)._replace(incomplete=False)


@FUZZ
@given(records=st.lists(valid_records, max_size=6), junk=st.binary(max_size=200))
def test_scan_random_tail_property(records: list[bytes], junk: bytes) -> None:
    buf = b"".join(records)
    result = scan(buf + junk)
    assert result.end >= expected_prefix(records).end
    assert result.end <= len(buf + junk)
    assert len(iter_records(buf + junk, 0, result.end)) == result.records


@FUZZ
@given(buf=st.binary(max_size=600), data=st.data())
def test_fuzz_scan_and_iter_records(buf: bytes, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(buf)), label="start")
    result = scan(buf, start)
    assert start <= result.end <= len(buf)
    assert result.end == start or result.records > 0
    if result.end == len(buf):
        assert result.incomplete
    decoded = iter_records(buf, start, result.end)
    assert len(decoded) == result.records
    for _, record in decoded:
        assert MIN_TIMESTAMP <= record.timestamp < MAX_TIMESTAMP
        assert "\0" not in record.name
    if decoded:
        assert decoded[-1][1].name != ""


@FUZZ
@given(buf=st.binary(max_size=600), data=st.data())
def test_fuzz_iter_records_only_raises_malformed_record(buf: bytes, data: st.DataObject) -> None:
    start = data.draw(st.integers(-5, len(buf) + 5), label="start")
    end = data.draw(st.none() | st.integers(-5, len(buf) + 5), label="end")
    for call in (lambda: iter_records(buf, start, end), lambda: decode_records(buf)):
        try:
            call()
        except ProtocolError as exc:
            assert isinstance(exc, MalformedRecord)
            assert isinstance(exc.code, ErrorCode)


# --- iter_records / decode_records -----------------------------------------------------------


def test_iter_records_offsets_and_values() -> None:
    buf = rec(b"loss", step=1, value=0.5) + rec(b"", step=2) + rec(b"acc", step=3, value=-1.0)
    assert iter_records(buf) == [
        (0, MetricRecord(TS, 1, 0.5, "loss")),
        (25, MetricRecord(TS, 2, 1.0, "")),
        (46, MetricRecord(TS, 3, -1.0, "acc")),
    ]
    assert iter_records(buf, 25, 46) == [(25, MetricRecord(TS, 2, 1.0, ""))]
    assert iter_records(bytearray(buf), 46) == [(46, MetricRecord(TS, 3, -1.0, "acc"))]
    assert decode_records(memoryview(buf))[0].name == "loss"
    assert iter_records(buf, 25, 25) == []


def test_decode_records_replaces_invalid_utf8() -> None:
    assert decode_records(rec(b"lo\xffss") + rec(b"\xe2\x82")) == [
        MetricRecord(TS, 0, 1.0, "lo\ufffdss"),
        MetricRecord(TS, 0, 1.0, "\ufffd"),
    ]


def test_decode_records_does_not_apply_validity_rule() -> None:
    buf = rec(timestamp=0) + rec(b"a\x00b")
    assert [r.name for r in decode_records(buf)] == ["loss", "a\x00b"]


@pytest.mark.parametrize("cut", range(1, 25))
def test_iter_records_cut(cut: int) -> None:
    buf = rec(b"first") + rec(b"loss")[:cut]
    if cut < 21:
        assert records_rejected(buf) == f"{cut} stray bytes at offset 26"
    else:
        assert records_rejected(buf) == f"record at offset 26 runs past the end ({26 + cut})"


@pytest.mark.parametrize(
    ("start", "end"), [(-1, None), (0, 51), (30, 20), (0, -1), (52, None), (-5, 3)]
)
def test_iter_records_range_outside_buffer(start: int, end: int) -> None:
    buf = rec() + rec(b"x")
    stop = len(buf) if end is None else end
    assert records_rejected(buf, start, end) == (
        f"range {start}:{stop} is outside the {len(buf)}-byte buffer"
    )


# --- meta.bin --------------------------------------------------------------------------------

COMMIT_HEX = "0123456789abcdef0123456789abcdef01234567"


def meta_bytes(*fields: bytes, version: int = 1, timestamp: int = 1764000000) -> bytes:
    return struct.pack(">Bq", version, timestamp) + b"".join(bytes((len(f),)) + f for f in fields)


@pytest.mark.parametrize("size", range(10))
def test_metadata_too_short(size: int) -> None:
    assert metadata_rejected(meta_bytes(b"")[:size]) == "metadata file too short"
    assert metadata_rejected(b"\x01" * size) == "metadata file too short"


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_metadata_unsupported_version(version: int) -> None:
    data = meta_bytes(COMMIT_HEX.encode(), b"job", b"user", version=version)
    assert metadata_rejected(data) == "unsupported metadata version"


@pytest.mark.parametrize(
    "data",
    [
        meta_bytes() + b"\x01",
        meta_bytes() + b"\x28" + COMMIT_HEX.encode()[:39],
        meta_bytes(COMMIT_HEX.encode()) + b"\x05job",
        meta_bytes(COMMIT_HEX.encode(), b"job") + b"\xffuser",
        meta_bytes(b"") + b"\x02",
    ],
)
def test_metadata_string_runs_past_end(data: bytes) -> None:
    assert metadata_rejected(data) == "metadata string runs past the end of the file"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ((b"",), ("", "", "")),
        ((COMMIT_HEX.encode(),), (COMMIT_HEX, "", "")),
        ((COMMIT_HEX.encode(), b"job"), (COMMIT_HEX, "job", "")),
        ((COMMIT_HEX.encode(), b"", b""), (COMMIT_HEX, "", "")),
        ((COMMIT_HEX.encode(), b"", b"bob"), (COMMIT_HEX, "", "bob")),
    ],
)
def test_metadata_absent_or_empty_fields(
    fields: tuple[bytes, ...], expected: tuple[str, str, str]
) -> None:
    meta = decode_metadata(meta_bytes(*fields))
    assert (meta.commit_id, meta.job_name, meta.user) == expected
    assert meta.timestamp == 1764000000


def test_metadata_bytes_after_user_are_ignored() -> None:
    data = meta_bytes(COMMIT_HEX.encode(), b"job", b"bob") + b"\x05extra"
    assert decode_metadata(data).user == "bob"


def test_metadata_negative_timestamp_and_replacement() -> None:
    meta = decode_metadata(meta_bytes(b"c", b"j\xff", b"u", timestamp=-5))
    assert meta == Metadata(commit_id="c", timestamp=-5, job_name="j\ufffd", user="u")


def test_metadata_defaults_encode_as_empty_strings() -> None:
    meta = Metadata(commit_id=COMMIT_HEX, timestamp=0)
    assert encode_metadata(meta) == meta_bytes(COMMIT_HEX.encode(), b"", b"", timestamp=0)


@pytest.mark.parametrize("field", ["commit_id", "job_name", "user"])
@pytest.mark.parametrize("value", ["x" * 256, "é" * 128, "🚀" * 64])
def test_metadata_rejects_long_field_before_writing(field: str, value: str) -> None:
    fields = {"commit_id": COMMIT_HEX, "job_name": "", "user": "", field: value}
    with pytest.raises(MalformedRecord) as info:
        Metadata(timestamp=1, **fields)
    assert info.value.message == f"metadata {field} longer than 255 bytes"


@pytest.mark.parametrize("timestamp", [-(2**63) - 1, 2**63])
def test_metadata_rejects_timestamp_out_of_int64(timestamp: int) -> None:
    with pytest.raises(MalformedRecord, match="metadata timestamp out of int64 range"):
        Metadata(commit_id=COMMIT_HEX, timestamp=timestamp)


text255 = st.text(max_size=255).map(lambda text: text.encode()[:255].decode(errors="ignore"))


@FUZZ
@given(
    st.builds(
        Metadata,
        commit_id=text255,
        timestamp=st.integers(-(2**63), 2**63 - 1),
        job_name=text255,
        user=text255,
    )
)
def test_metadata_round_trip(meta: Metadata) -> None:
    data = encode_metadata(meta)
    assert data[0] == 1
    assert decode_metadata(data) == meta


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_decode_metadata(data: bytes) -> None:
    try:
        decode_metadata(data)
    except ProtocolError as exc:
        assert isinstance(exc, MalformedRecord)
        assert isinstance(exc.code, ErrorCode)


@FUZZ
@given(
    fields=st.lists(st.binary(max_size=255), max_size=4),
    data=st.data(),
)
def test_fuzz_decode_metadata_cut_and_tail(fields: list[bytes], data: st.DataObject) -> None:
    whole = meta_bytes(*fields)
    cut = data.draw(st.integers(0, len(whole)), label="cut")
    tail = data.draw(st.binary(max_size=40), label="tail")
    try:
        decode_metadata(whole[:cut] + tail)
    except ProtocolError as exc:
        assert isinstance(exc, MalformedRecord)
