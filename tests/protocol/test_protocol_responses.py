"""Responses and the DATA `metrics` payload: round trips, decode errors, fuzzing."""

import math
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetchml.protocol.enums import ErrorCode, LogLevel, PacketType
from fetchml.protocol.errors import MalformedResponse, ProtocolError
from fetchml.protocol.metrics import (
    MetricRecord,
    MetricsPage,
    decode_metrics_payload,
    encode_metrics_payload,
    encode_record,
)
from fetchml.protocol.responses import (
    Data,
    Error,
    Log,
    Progress,
    Response,
    StatusReport,
    Success,
    decode_response,
    decode_uvarint,
    encode_response,
    encode_uvarint,
)
from fetchml.protocol.shapes import float_value, json_value

FUZZ = settings(max_examples=200, deadline=None)

TS = 1764000000
HEAD = {t: struct.pack(">BQ", t, TS) for t in PacketType}


def rejected(packet: bytes) -> str:
    with pytest.raises(MalformedResponse) as info:
        decode_response(packet)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    return info.value.message


def payload_rejected(payload: bytes) -> str:
    with pytest.raises(MalformedResponse) as info:
        decode_metrics_payload(payload)
    return info.value.message


def vstr(raw: bytes) -> bytes:
    return encode_uvarint(len(raw)) + raw


# --- strategies ------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
texts = st.text(max_size=300)

RESPONSE_STRATEGIES: dict[type[Response], st.SearchStrategy[Response]] = {
    Success: st.builds(Success, timestamp=u64, message=texts),
    Error: st.builds(
        Error, timestamp=u64, code=st.sampled_from(ErrorCode), message=texts, details=texts
    ),
    Progress: st.builds(
        Progress, timestamp=u64, progress_type=u8, value=u32, total=u32, message=texts
    ),
    StatusReport: st.builds(StatusReport, timestamp=u64, status_json=texts),
    Data: st.builds(Data, timestamp=u64, data_type=texts, payload=st.binary(max_size=400)),
    Log: st.builds(Log, timestamp=u64, level=st.sampled_from(LogLevel), message=texts),
}
any_response = st.one_of(list(RESPONSE_STRATEGIES.values()))

names = st.text(max_size=255).map(lambda text: text.encode()[:255].decode(errors="ignore"))
records = st.builds(MetricRecord, timestamp=u64, step=u32, value=st.floats(), name=names)
raw_records = st.tuples(u64, u32, st.floats(), st.binary(max_size=255)).map(
    lambda fields: encode_record(*fields)
)


def record_bytes(record: MetricRecord) -> bytes:
    return encode_record(record.timestamp, record.step, record.value, record.name.encode())


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(RESPONSE_STRATEGIES), ids=lambda cls: cls.__name__)
@FUZZ
@given(data=st.data())
def test_round_trip(cls: type[Response], data: st.DataObject) -> None:
    response = data.draw(RESPONSE_STRATEGIES[cls])
    wire = encode_response(response)
    assert wire[:9] == struct.pack(">BQ", list(RESPONSE_STRATEGIES).index(cls), response.timestamp)
    decoded = decode_response(wire)
    assert type(decoded) is cls
    assert decoded == response
    assert encode_response(decoded) == wire


def test_long_strings_use_multi_byte_uvarint() -> None:
    message = "m" * 300
    wire = encode_response(Success(timestamp=TS, message=message))
    assert wire[9:11] == bytes.fromhex("ac02")
    assert decode_response(wire) == Success(timestamp=TS, message=message)


@FUZZ
@given(st.integers(0, 2**64 - 1))
def test_uvarint_round_trip(value: int) -> None:
    raw = encode_uvarint(value)
    assert len(raw) == max(1, (value.bit_length() + 6) // 7)
    assert decode_uvarint(b"\xaa" + raw + b"\xbb", 1) == (value, 1 + len(raw))


@FUZZ
@given(next_index=u64, items=st.lists(records, max_size=20))
def test_metrics_payload_round_trip(next_index: int, items: list[MetricRecord]) -> None:
    raw = b"".join(record_bytes(r) for r in items)
    payload = encode_metrics_payload(next_index, len(items), raw)
    assert payload[:12] == struct.pack(">QI", next_index, len(items))
    page = decode_metrics_payload(payload)
    assert page.next == next_index
    assert [r.name for r in page.records] == [r.name for r in items]
    # Re-encoding compares values bit for bit (NaN, -0.0).
    assert b"".join(record_bytes(r) for r in page.records) == raw


def test_metrics_payload_with_no_records() -> None:
    assert decode_metrics_payload(encode_metrics_payload(42, 0, b"")) == MetricsPage(42, [])


def test_metrics_payload_names_decode_with_replacement() -> None:
    raw = encode_record(1795735109, 1, 2.0, b"lo\xffss") + encode_record(1795735109, 2, 3.0, b"")
    page = decode_metrics_payload(encode_metrics_payload(7, 2, raw))
    assert [r.name for r in page.records] == ["lo\ufffdss", ""]


# --- decode errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(9))
def test_packet_shorter_than_header(size: int) -> None:
    packet = HEAD[PacketType.SUCCESS][:size]
    assert rejected(packet) == f"packet too short: {size} bytes, need 9"


@pytest.mark.parametrize("packet_type", [0x06, 0x10, 0x7F, 0xFF])
def test_unknown_packet_type(packet_type: int) -> None:
    text = rejected(struct.pack(">BQ", packet_type, TS) + b"\x00")
    assert text.startswith("invalid enum value in response:")
    assert str(packet_type) in text


def test_unknown_error_code() -> None:
    text = rejected(HEAD[PacketType.ERROR] + b"\x06\x00\x00")
    assert text == "invalid enum value in response: 6 is not a valid ErrorCode"


def test_unknown_log_level() -> None:
    text = rejected(HEAD[PacketType.LOG] + b"\x04\x00")
    assert text == "invalid enum value in response: 4 is not a valid LogLevel"


@pytest.mark.parametrize(
    ("packet_type", "body"),
    [
        (PacketType.ERROR, b""),
        (PacketType.PROGRESS, b""),
        (PacketType.PROGRESS, b"\x01\x00\x00\x00\x03\x00\x00\x00"),
        (PacketType.LOG, b""),
    ],
)
def test_fixed_fields_cut(packet_type: PacketType, body: bytes) -> None:
    packet = HEAD[packet_type] + body
    assert rejected(packet) == f"{packet_type.name} packet too short: {len(packet)} bytes"


@pytest.mark.parametrize(
    "packet",
    [
        HEAD[PacketType.SUCCESS],
        HEAD[PacketType.STATUS],
        HEAD[PacketType.DATA],
        HEAD[PacketType.DATA] + b"\x00",
        HEAD[PacketType.ERROR] + b"\x01",
        HEAD[PacketType.ERROR] + b"\x01\x00",
        HEAD[PacketType.LOG] + b"\x01",
        HEAD[PacketType.SUCCESS] + b"\x80",
        HEAD[PacketType.SUCCESS] + b"\xff\xff",
    ],
)
def test_uvarint_cut(packet: bytes) -> None:
    assert rejected(packet) == "uvarint runs past the end of the packet"


@pytest.mark.parametrize(
    ("packet", "length"),
    [
        (HEAD[PacketType.SUCCESS] + b"\x01", 1),
        (HEAD[PacketType.SUCCESS] + b"\x05abcd", 5),
        (HEAD[PacketType.STATUS] + bytes.fromhex("ac02") + b"{}", 300),
        (HEAD[PacketType.DATA] + vstr(b"metrics") + b"\x10" + b"x" * 15, 16),
        (HEAD[PacketType.ERROR] + b"\x01" + vstr(b"m") + b"\x02d", 2),
    ],
)
def test_string_runs_past_end(packet: bytes, length: int) -> None:
    assert rejected(packet) == f"string of {length} bytes runs past the end of the packet"


def test_uvarint_longer_than_64_bits() -> None:
    assert rejected(HEAD[PacketType.SUCCESS] + b"\xff" * 10 + b"\x01") == (
        "uvarint longer than 64 bits"
    )
    with pytest.raises(MalformedResponse, match="uvarint longer than 64 bits"):
        decode_uvarint(b"\x80" * 10 + b"\x00", 0)


def test_ten_byte_uvarint_is_accepted() -> None:
    raw = encode_uvarint(2**64 - 1)
    assert len(raw) == 10
    assert decode_uvarint(raw, 0) == (2**64 - 1, 10)


@pytest.mark.parametrize(
    "packet",
    [
        HEAD[PacketType.SUCCESS] + vstr(b"\xff"),
        HEAD[PacketType.STATUS] + vstr(b"{\xc3}"),
        HEAD[PacketType.ERROR] + b"\x01" + vstr(b"\xed\xa0\x80") + b"\x00",
        HEAD[PacketType.ERROR] + b"\x01\x00" + vstr(b"\xc0\xaf"),
        HEAD[PacketType.PROGRESS] + struct.pack(">BII", 1, 2, 3) + vstr(b"\x80"),
        HEAD[PacketType.DATA] + vstr(b"\xfe") + b"\x00",
        HEAD[PacketType.LOG] + b"\x01" + vstr(b"ok\xe2\x82"),
    ],
)
def test_invalid_utf8(packet: bytes) -> None:
    assert rejected(packet) == "invalid UTF-8 in a response string"


def test_data_payload_need_not_be_utf8() -> None:
    packet = HEAD[PacketType.DATA] + vstr(b"bin") + vstr(b"\xff\x00\xfe")
    assert decode_response(packet) == Data(timestamp=TS, data_type="bin", payload=b"\xff\x00\xfe")


@pytest.mark.parametrize(
    "response",
    [
        Success(timestamp=TS),
        Error(timestamp=TS, code=ErrorCode.UNKNOWN_ERROR, message="internal error"),
        Progress(timestamp=TS, progress_type=1, value=3, total=10),
        StatusReport(timestamp=TS, status_json="{}"),
        Data(timestamp=TS, data_type="whoami", payload=b"{}"),
        Log(timestamp=TS, level=LogLevel.ERROR, message="x"),
    ],
    ids=lambda r: type(r).__name__,
)
@pytest.mark.parametrize("extra", [b"\x00", b"abc"])
def test_trailing_bytes(response: Response, extra: bytes) -> None:
    packet_type = PacketType(encode_response(response)[0])
    text = rejected(encode_response(response) + extra)
    assert text == f"{len(extra)} trailing bytes after a {packet_type.name}"


# --- DATA `metrics` payload errors -----------------------------------------------------------

RECORD = encode_record(1795735109, 7, 0.25, b"loss")


@pytest.mark.parametrize("size", range(12))
def test_metrics_payload_too_short(size: int) -> None:
    payload = encode_metrics_payload(0, 0, b"")[:size]
    assert payload_rejected(payload) == f"metrics payload too short: {size} bytes"


@pytest.mark.parametrize("cut", range(1, len(RECORD)))
def test_metrics_payload_cut_record(cut: int) -> None:
    payload = encode_metrics_payload(0, 1, RECORD[:cut])
    text = payload_rejected(payload)
    if cut < 21:
        assert text == f"metrics payload: {cut} stray bytes at offset 0"
    else:
        assert text == f"metrics payload: record at offset 0 runs past the end ({cut})"


@pytest.mark.parametrize(("count", "held"), [(0, 1), (2, 1), (1, 3), (1, 0)])
def test_metrics_payload_count_mismatch(count: int, held: int) -> None:
    payload = encode_metrics_payload(5, count, RECORD * held)
    assert payload_rejected(payload) == f"metrics payload says {count} records, holds {held}"


def test_metrics_payload_error_is_a_response_error() -> None:
    with pytest.raises(MalformedResponse) as info:
        decode_metrics_payload(encode_metrics_payload(0, 1, RECORD + b"\x00"))
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.message == "metrics payload: 1 stray bytes at offset 25"


# --- fuzzing: only ProtocolError may come out ------------------------------------------------


def only_protocol_errors(decode: Callable[[bytes], object], data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError as exc:
        assert isinstance(exc, MalformedResponse)
        assert isinstance(exc.code, ErrorCode)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_response_random_bytes(packet: bytes) -> None:
    only_protocol_errors(decode_response, packet)


@FUZZ
@given(packet_type=st.sampled_from(PacketType), ts=u64, body=st.binary(max_size=300))
def test_fuzz_response_known_type_random_body(packet_type: int, ts: int, body: bytes) -> None:
    only_protocol_errors(decode_response, struct.pack(">BQ", packet_type, ts) + body)


@FUZZ
@given(response=any_response, data=st.data())
def test_fuzz_response_cut_and_tail(response: Response, data: st.DataObject) -> None:
    wire = encode_response(response)
    cut = data.draw(st.integers(0, len(wire)), label="cut")
    tail = data.draw(st.binary(max_size=32), label="tail")
    only_protocol_errors(decode_response, wire[:cut] + tail)


@FUZZ
@given(response=any_response, data=st.data())
def test_fuzz_response_flipped_byte(response: Response, data: st.DataObject) -> None:
    wire = bytearray(encode_response(response))
    index = data.draw(st.integers(0, len(wire) - 1), label="index")
    wire[index] = data.draw(st.integers(0, 255), label="byte")
    only_protocol_errors(decode_response, bytes(wire))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_metrics_payload_random_bytes(payload: bytes) -> None:
    only_protocol_errors(decode_metrics_payload, payload)


@FUZZ
@given(items=st.lists(raw_records, max_size=8), count=st.integers(0, 10), data=st.data())
def test_fuzz_metrics_payload_cut_and_tail(
    items: list[bytes], count: int, data: st.DataObject
) -> None:
    payload = encode_metrics_payload(0, count, b"".join(items))
    cut = data.draw(st.integers(0, len(payload)), label="cut")
    tail = data.draw(st.binary(max_size=40), label="tail")
    only_protocol_errors(decode_metrics_payload, payload[:cut] + tail)


# --- JSON metric values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity"), (0.25, 0.25)],
)
def test_json_value_and_back(value: float, text: float | str) -> None:
    assert json_value(value) == text or (math.isnan(value) and json_value(value) == "NaN")
    back = float_value(json_value(value))
    assert back == value or (math.isnan(back) and math.isnan(value))


@pytest.mark.parametrize("raw", ["nan", "inf", None, True, [1.0], {"v": 1}])
def test_float_value_rejects_what_is_not_a_metric_value(raw: object) -> None:
    with pytest.raises(MalformedResponse, match="metric value must be a number"):
        float_value(raw)


def test_float_value_accepts_integers() -> None:
    assert float_value(3) == 3.0 and isinstance(float_value(3), float)
