"""protocol/metrics.py and protocol/rules.py: golden bytes both ways for the record walker,
points, stamps, LOG_METRICS from encoded points, the metrics packet and acknowledgements."""

import math
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetchml.protocol import rules
from fetchml.protocol.enums import Opcode
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.keys import key_hash
from fetchml.protocol.metrics import (
    RECORD_MIN,
    RECORD_STEP,
    MetricRecord,
    ack_packet,
    acked_records,
    decode_metrics_payload,
    encode_point,
    encode_record,
    iter_records,
    metrics_packet,
    record_tails,
    scan,
    stamp_records,
    walk,
)
from fetchml.protocol.requests import (
    LogMetric,
    LogMetrics,
    MetricPoint,
    QueueJob,
    decode_request,
    encode_log_metrics,
    encode_request,
)
from fetchml.protocol.responses import Data, Success, decode_response, encode_response

TS = 1795735109
LOSS = bytes.fromhex("000000006b08be45 00000007 3fd0000000000000 04 6c6f7373")
ACC = bytes.fromhex("000000006b08be45 00000007 3feccccccccccccd 03 616363")
KEY = key_hash("example-key")
COMMIT = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")


def test_record_and_point_golden_bytes() -> None:
    assert encode_record(TS, 7, 0.25, b"loss") == LOSS
    assert encode_point(7, 0.25, b"loss") == LOSS[8:]
    assert stamp_records(TS, [LOSS[8:], ACC[8:]]) == LOSS + ACC
    assert RECORD_STEP.unpack_from(ACC)[0] == 7


def test_walk_yields_record_starts() -> None:
    data = LOSS + ACC + LOSS
    out: list[int] = []
    assert walk(data, out) == len(data)
    assert out == [0, 25, 49]
    assert [at for at, _ in iter_records(data)] == out


def test_walk_adds_base_and_appends_to_an_array() -> None:
    offsets = array("q", [3])
    assert walk(LOSS + ACC, offsets, 1000) == 49
    assert list(offsets) == [3, 1000, 1025]


def test_walk_leaves_a_record_cut_by_the_end() -> None:
    data = LOSS + ACC
    for cut in range(1, len(ACC)):
        out: list[int] = []
        assert walk(data[: len(data) - cut], out) == len(LOSS)
        assert out == [0]
    out = []
    assert walk(data, out, 0, 25, len(data) - 1) == 25 and out == []
    assert walk(data, out, 0, 25) == len(data) and out == [25]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: 0 not in b), max_size=20))
def test_walk_agrees_with_scan(names: list[bytes]) -> None:
    data = b"".join(encode_record(TS, i, 0.5, n) for i, n in enumerate(names))
    out: list[int] = []
    assert walk(data, out) == scan(data).end == len(data)
    assert len(out) == scan(data).records == len(names)


def test_metrics_packet_golden_bytes_both_ways() -> None:
    # The DATA `metrics` packet of the protocol document.
    wire = bytes.fromhex(
        "04 0000000069248100 07 6d657472696373 25 0000000000000000 00000001" + LOSS.hex()
    )
    assert metrics_packet(0x69248100, 0, 1, LOSS) == wire
    response = decode_response(wire)
    assert response == Data(timestamp=0x69248100, data_type="metrics", payload=wire[18:])
    assert encode_response(response) == wire
    page = decode_metrics_payload(response.payload)
    assert page.next == 0 and page.records == [MetricRecord(TS, 7, 0.25, "loss")]


def test_ack_packets_golden_bytes_both_ways() -> None:
    assert ack_packet(0x69248100, None) == bytes.fromhex("00 0000000069248100 00")
    assert ack_packet(0x69248100, 2) == bytes.fromhex("00 0000000069248100 01 32")
    got = decode_response(ack_packet(0x69248100, 2))
    assert got == Success(timestamp=0x69248100, message="2")
    assert acked_records(got.message, 5) == 2
    assert acked_records("", 5) == 5
    assert acked_records("later", 5) == 5


def test_log_metrics_from_encoded_points_golden_bytes() -> None:
    points = encode_point(7, 0.25, b"loss") + encode_point(7, 0.9, b"acc")
    wire = encode_log_metrics(KEY, COMMIT, 2, points)
    expected = encode_request(
        LogMetrics(
            key_hash=KEY,
            commit_id=COMMIT,
            metrics=(MetricPoint(7, 0.25, "loss"), MetricPoint(7, 0.9, "acc")),
        )
    )
    assert wire == expected
    assert wire[0] == Opcode.LOG_METRICS and wire[37:39] == b"\x00\x02"
    assert record_tails(wire) == (KEY, COMMIT, [LOSS[8:], ACC[8:]])
    assert decode_request(wire) == decode_request(expected)


@pytest.mark.parametrize(
    ("count", "commit", "error"),
    [
        (0, COMMIT, "LOG_METRICS count must be 1..65535, got 0"),
        (65536, COMMIT, "LOG_METRICS count must be 1..65535, got 65536"),
        (1, COMMIT[:19], "commit_id must be 20 bytes, got 19"),
    ],
)
def test_log_metrics_from_encoded_points_refuses(count: int, commit: bytes, error: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        encode_log_metrics(KEY, commit, count, LOSS[8:])
    assert info.value.message == error


# -- rules ---------------------------------------------------------------------------


def test_priority_ranges_are_two_deliberate_ranges() -> None:
    assert (rules.PRIORITY_MIN, rules.PRIORITY_MAX) == (0, 255)
    assert (rules.CLI_PRIORITY_MIN, rules.CLI_PRIORITY_MAX, rules.DEFAULT_PRIORITY) == (1, 10, 5)
    assert rules.CLI_PRIORITY_MIN <= rules.DEFAULT_PRIORITY <= rules.CLI_PRIORITY_MAX
    assert rules.PRIORITY_MIN <= rules.CLI_PRIORITY_MIN <= rules.CLI_PRIORITY_MAX <= 255


@pytest.mark.parametrize("priority", [-1, 256, 1000])
def test_queue_job_refuses_a_priority_the_wire_cannot_carry(priority: int) -> None:
    with pytest.raises(MalformedRequest) as info:
        QueueJob(key_hash=KEY, commit_id=COMMIT, priority=priority, job_name="train")
    assert info.value.message == f"priority must be 0..255, got {priority}"


@pytest.mark.parametrize("step", [-1, 2**32])
def test_metric_requests_refuse_a_step_the_wire_cannot_carry(step: int) -> None:
    message = f"step must be 0..4294967295, got {step}"
    with pytest.raises(MalformedRequest, match=message):
        LogMetric(key_hash=KEY, commit_id=COMMIT, step=step, value=1.0, name="loss")
    with pytest.raises(MalformedRequest, match=message):
        LogMetrics(key_hash=KEY, commit_id=COMMIT, metrics=(MetricPoint(step, math.nan, "x"),))


def test_rules_accept_their_bounds() -> None:
    assert rules.check_priority(0) == 0 and rules.check_priority(255) == 255
    assert rules.check_step(0) == 0 and rules.check_step(rules.MAX_STEP) == rules.MAX_STEP


@pytest.mark.parametrize(
    ("commit", "error"),
    [
        ("0123", "commit must be 40 hex characters, got '0123'"),
        ("z" * 40, f"commit must be 40 hex characters, got '{'z' * 40}'"),
        (b"\x01" * 19, "commit must be 20 bytes, got 19"),
    ],
)
def test_parse_commit_refuses(commit: str | bytes, error: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        rules.parse_commit(commit)
    assert info.value.message == error


def test_parse_commit_accepts_hex_and_raw() -> None:
    assert rules.parse_commit(f" {COMMIT.hex().upper()}\n") == COMMIT
    assert rules.parse_commit(COMMIT) == COMMIT


def test_record_min_is_the_fixed_head() -> None:
    assert RECORD_MIN == 21 == len(LOSS) - 4
