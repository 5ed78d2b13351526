"""Requests: round trips, every decode error of PROTOCOL.md section 3, encode-side checks."""

import dataclasses
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetchml.protocol.enums import (
    RESERVED_OPCODES,
    UPDATABLE_JOB_STATUSES,
    ErrorCode,
    JobStatus,
    Opcode,
    PruneType,
)
from fetchml.protocol.errors import MalformedRequest, ProtocolError
from fetchml.protocol.metrics import (
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    encode_record,
    max_timestamp,
    record_tails,
    records_at,
)
from fetchml.protocol.requests import (
    REQUEST_TYPES,
    CancelJob,
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    ListRuns,
    LogMetric,
    LogMetrics,
    LogMetricsAt,
    MetricPoint,
    Prune,
    PrunePreview,
    QueryMetrics,
    QueueJob,
    QueueJobSpec,
    Request,
    Status,
    UpdateJob,
    UpdateRun,
    WatchMetrics,
    WhoAmI,
    decode_request,
    encode_request,
    log_metrics_at_head,
)
from fetchml.protocol.rules import check_metric_name
from tests.support.wire import MIN_BODY

FUZZ = settings(max_examples=200, deadline=None)

KEY = bytes.fromhex("5ba7dccf22514f45ae84bfb8b12cd02e")
COMMIT = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")


def message(opcode: int, body: bytes = b"") -> bytes:
    return bytes((opcode,)) + KEY + body


def str8(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return bytes((len(raw),)) + raw


def point(step: int, value: float, name: bytes) -> bytes:
    return struct.pack(">IdB", step, value, len(name)) + name


def stamped(name: bytes, timestamp: int = 1795735109, step: int = 1) -> bytes:
    """A metrics.bin record as LOG_METRICS_AT carries it (any name bytes)."""
    return struct.pack(">QIdB", timestamp, step, 0.5, len(name)) + name


def rejected(wire: bytes) -> str:
    """Decode `wire`, expecting an INVALID_REQUEST; return its message."""
    with pytest.raises(MalformedRequest) as info:
        decode_request(wire)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert str(info.value) == info.value.message
    return info.value.message


def comparable(value: object) -> object:
    """A NaN-safe, sign-of-zero-exact view of a request for equality checks."""
    if isinstance(value, float):
        return ("f64", struct.pack(">d", value))
    if isinstance(value, tuple):
        return tuple(comparable(v) for v in value)
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return (type(value), tuple((f.name, comparable(getattr(value, f.name))) for f in fields))
    return value


# --- strategies ------------------------------------------------------------------------------


def fit(limit: int) -> Callable[[str], str]:
    """Cut a string to at most `limit` UTF-8 bytes on a character boundary."""
    return lambda text: text.encode()[:limit].decode(errors="ignore")


u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
f64 = st.floats(allow_nan=True, allow_infinity=True)
key_hashes = st.binary(min_size=16, max_size=16)
commits = st.binary(min_size=20, max_size=20)
str8s = st.text(max_size=255).map(fit(255))
str16s = st.text(max_size=400)
metric_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=255
).map(fit(255)) | st.sampled_from(["loss", "a", "é" * 127, "x" * 255, "🚀" * 63])
points = st.builds(MetricPoint, u32, f64, metric_names)
timestamps = st.integers(MIN_TIMESTAMP, MAX_TIMESTAMP - 1)
records = st.builds(
    lambda ts, step, value, name: encode_record(ts, step, value, name.encode()),
    timestamps,
    u32,
    f64,
    metric_names,
)


def log_metrics_at(key_hash: bytes, commit_id: bytes, stamped: list[bytes]) -> LogMetricsAt:
    return LogMetricsAt(
        key_hash=key_hash, commit_id=commit_id, count=len(stamped), records=b"".join(stamped)
    )


REQUEST_STRATEGIES: dict[type[Request], st.SearchStrategy[Request]] = {
    QueueJob: st.builds(
        QueueJob, key_hash=key_hashes, commit_id=commits, priority=u8, job_name=str8s
    ),
    Status: st.builds(Status, key_hash=key_hashes),
    CancelJob: st.builds(CancelJob, key_hash=key_hashes, job_name=str8s),
    Prune: st.builds(
        Prune,
        key_hash=key_hashes,
        prune_type=st.sampled_from(PruneType),
        value=st.integers(1, 0xFFFFFFFF),
    ),
    LogMetric: st.builds(
        LogMetric, key_hash=key_hashes, commit_id=commits, step=u32, value=f64, name=metric_names
    ),
    GetExperiment: st.builds(GetExperiment, key_hash=key_hashes, commit_id=commits),
    LogMetrics: st.builds(
        LogMetrics,
        key_hash=key_hashes,
        commit_id=commits,
        metrics=st.lists(points, min_size=1, max_size=50).map(tuple),
    ),
    CreateExperiment: st.builds(
        CreateExperiment, key_hash=key_hashes, commit_id=commits, job_name=str8s
    ),
    ListExperiments: st.builds(ListExperiments, key_hash=key_hashes),
    QueryMetrics: st.builds(
        QueryMetrics,
        key_hash=key_hashes,
        commit_id=commits,
        name=str8s,
        step_from=u32,
        step_to=u32,
        max_points=u32,
        after=u64,
        limit=u32,
    ),
    WatchMetrics: st.builds(
        WatchMetrics, key_hash=key_hashes, commit_id=commits, from_index=u64, name=str8s
    ),
    ClaimJob: st.builds(ClaimJob, key_hash=key_hashes, worker_id=str8s),
    UpdateJob: st.builds(
        UpdateJob,
        key_hash=key_hashes,
        job_id=str8s,
        status=st.sampled_from(sorted(UPDATABLE_JOB_STATUSES)),
        error=str16s,
        worker_id=st.none() | str8s,
    ),
    WhoAmI: st.builds(WhoAmI, key_hash=key_hashes),
    PrunePreview: st.builds(
        PrunePreview,
        key_hash=key_hashes,
        prune_type=st.sampled_from(PruneType),
        value=st.integers(1, 0xFFFFFFFF),
    ),
    UpdateRun: st.builds(UpdateRun, key_hash=key_hashes, commit_id=commits, patch=str16s),
    LogMetricsAt: st.builds(
        log_metrics_at, key_hashes, commits, st.lists(records, min_size=1, max_size=8)
    ),
    ListRuns: st.builds(ListRuns, key_hash=key_hashes, filter=str16s),
    QueueJobSpec: st.builds(
        QueueJobSpec,
        key_hash=key_hashes,
        commit_id=commits,
        priority=u8,
        job_name=str8s,
        spec=str16s,
    ),
}
any_request = st.one_of(list(REQUEST_STRATEGIES.values()))


def test_strategies_cover_every_request_type() -> None:
    assert set(REQUEST_STRATEGIES) == set(REQUEST_TYPES.values())


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(REQUEST_STRATEGIES), ids=lambda cls: cls.OPCODE.name)
@FUZZ
@given(data=st.data())
def test_round_trip(cls: type[Request], data: st.DataObject) -> None:
    request = data.draw(REQUEST_STRATEGIES[cls])
    wire = encode_request(request)
    assert wire[0] == cls.OPCODE
    assert wire[1:17] == request.key_hash
    decoded = decode_request(wire)
    assert type(decoded) is cls
    assert comparable(decoded) == comparable(request)
    assert encode_request(decoded) == wire


def test_round_trip_keeps_nan_bits_and_negative_zero() -> None:
    nan = struct.unpack(">d", bytes.fromhex("7ff8000000000123"))[0]
    metrics = (
        MetricPoint(0, nan, "nan"),
        MetricPoint(1, -0.0, "neg-zero"),
        MetricPoint(2, float("inf"), "inf"),
        MetricPoint(3, float("-inf"), "-inf"),
    )
    wire = encode_request(LogMetrics(key_hash=KEY, commit_id=COMMIT, metrics=metrics))
    assert bytes.fromhex("7ff8000000000123") in wire
    decoded = decode_request(wire)
    assert isinstance(decoded, LogMetrics)
    assert [struct.pack(">d", p.value) for p in decoded.metrics] == [
        struct.pack(">d", p.value) for p in metrics
    ]


def test_log_metrics_of_max_size_name_and_many_points() -> None:
    metrics = tuple(MetricPoint(i, float(i), "n" * 255) for i in range(300))
    wire = encode_request(LogMetrics(key_hash=KEY, commit_id=COMMIT, metrics=metrics))
    assert len(wire) == 17 + 22 + 300 * (13 + 255)
    decoded = decode_request(wire)
    assert isinstance(decoded, LogMetrics)
    assert decoded.metrics == metrics


# --- short message, opcodes ------------------------------------------------------------------


@pytest.mark.parametrize("size", range(17))
def test_message_shorter_than_header(size: int) -> None:
    text = rejected(message(Opcode.STATUS)[:size])
    assert text == f"message too short: {size} bytes, a request needs at least 17"


@pytest.mark.parametrize("opcode", [0x00, 0x19, 0x7F, 0x80, 0xFF])
def test_unknown_opcode(opcode: int) -> None:
    assert rejected(message(opcode)) == f"unknown opcode 0x{opcode:02x}"


def test_unknown_opcode_0x7f_message() -> None:
    assert rejected(message(0x7F, b"anything")) == "unknown opcode 0x7f"


@pytest.mark.parametrize("opcode", sorted(RESERVED_OPCODES))
def test_reserved_opcode(opcode: int) -> None:
    assert opcode in range(0x05, 0x0A)
    assert rejected(message(opcode, b"\x00" * 40)) == f"unsupported opcode 0x{opcode:02x}"


def test_reserved_opcode_0x06_message() -> None:
    assert rejected(message(0x06)) == "unsupported opcode 0x06"


# --- body length -----------------------------------------------------------------------------


def test_min_body_table_is_complete() -> None:
    assert set(MIN_BODY) == set(Opcode)


@pytest.mark.parametrize("opcode", list(Opcode), ids=lambda op: op.name)
def test_min_body_of_layout(opcode: Opcode) -> None:
    min_body = REQUEST_TYPES[opcode].MIN_BODY
    assert min_body == MIN_BODY[opcode]


def short_body_message(opcode: Opcode, actual: int) -> str:
    return (
        f"{opcode.name} (0x{opcode:02x}): body too short; "
        f"minimum body length {MIN_BODY[opcode]}, actual {actual}"
    )


SHORT_OPCODES = [op for op in Opcode if MIN_BODY[op] > 0]


@pytest.mark.parametrize("opcode", SHORT_OPCODES, ids=lambda op: op.name)
def test_empty_body(opcode: Opcode) -> None:
    assert rejected(message(opcode)) == short_body_message(opcode, 0)


@pytest.mark.parametrize("opcode", SHORT_OPCODES, ids=lambda op: op.name)
def test_body_one_byte_below_minimum(opcode: Opcode) -> None:
    actual = MIN_BODY[opcode] - 1
    assert rejected(message(opcode, b"\x01" * actual)) == short_body_message(opcode, actual)


def test_log_metric_short_body_message() -> None:
    text = rejected(message(Opcode.LOG_METRIC, COMMIT + b"\x00" * 12))
    assert text == "LOG_METRIC (0x0a): body too short; minimum body length 33, actual 32"


def test_log_metrics_short_body_message() -> None:
    text = rejected(message(Opcode.LOG_METRICS, COMMIT + b"\x00"))
    assert text == "LOG_METRICS (0x0c): body too short; minimum body length 22, actual 21"


VALID_REQUESTS: list[Request] = [
    QueueJob(key_hash=KEY, commit_id=COMMIT, priority=5, job_name="train"),
    Status(key_hash=KEY),
    CancelJob(key_hash=KEY, job_name="train"),
    Prune(key_hash=KEY, prune_type=PruneType.KEEP_NEWEST, value=10),
    LogMetric(key_hash=KEY, commit_id=COMMIT, step=7, value=0.25, name="loss"),
    GetExperiment(key_hash=KEY, commit_id=COMMIT),
    LogMetrics(
        key_hash=KEY,
        commit_id=COMMIT,
        metrics=(MetricPoint(1, 0.5, "loss"), MetricPoint(1, 0.9, "acc")),
    ),
    CreateExperiment(key_hash=KEY, commit_id=COMMIT, job_name="train"),
    ListExperiments(key_hash=KEY),
    QueryMetrics(key_hash=KEY, commit_id=COMMIT, name="loss", limit=1000),
    WatchMetrics(key_hash=KEY, commit_id=COMMIT, from_index=100, name="acc"),
    ClaimJob(key_hash=KEY, worker_id="gpu-01"),
    UpdateJob(
        key_hash=KEY, job_id="job-1", status=JobStatus.FAILED, error="boom", worker_id="gpu-01"
    ),
    WhoAmI(key_hash=KEY),
    PrunePreview(key_hash=KEY, prune_type=PruneType.OLDER_THAN_DAYS, value=30),
    UpdateRun(key_hash=KEY, commit_id=COMMIT, patch='{"status":"running"}'),
    log_metrics_at(
        KEY,
        COMMIT,
        [encode_record(1795735109, 0, 1.0, b"loss"), encode_record(1795735110, 1, 0.5, b"acc")],
    ),
    QueueJobSpec(
        key_hash=KEY, commit_id=COMMIT, priority=5, job_name="train", spec='{"command":["x"]}'
    ),
    ListRuns(key_hash=KEY, filter='{"limit":10}'),
]


def test_valid_requests_cover_every_opcode() -> None:
    assert {r.OPCODE for r in VALID_REQUESTS} == set(Opcode)


@pytest.mark.parametrize("request_", VALID_REQUESTS, ids=lambda r: r.OPCODE.name)
def test_every_cut_of_a_valid_body_is_too_short(request_: Request) -> None:
    wire = encode_request(request_)
    old_form = b""
    if isinstance(request_, UpdateJob):  # without its trailing worker_id it is still whole
        old_form = encode_request(dataclasses.replace(request_, worker_id=None))
        assert decode_request(old_form) == dataclasses.replace(request_, worker_id=None)
    for cut in range(17, len(wire)):
        if cut != len(old_form):
            assert rejected(wire[:cut]) == short_body_message(request_.OPCODE, cut - 17)


def test_update_job_without_worker_id_is_the_old_form() -> None:
    old = UpdateJob(key_hash=KEY, job_id="j", status=JobStatus.RUNNING)
    assert old.worker_id is None
    assert encode_request(old) == message(Opcode.UPDATE_JOB, str8("j") + b"\x01\x00\x00")
    empty = decode_request(encode_request(old) + b"\x00")
    assert isinstance(empty, UpdateJob)
    assert empty.worker_id == ""


def test_update_job_worker_id_over_255_bytes_is_refused() -> None:
    long = UpdateJob(key_hash=KEY, job_id="j", status=JobStatus.RUNNING, worker_id="w" * 256)
    with pytest.raises(MalformedRequest, match="worker_id too long: 256 bytes"):
        encode_request(long)


@pytest.mark.parametrize("request_", VALID_REQUESTS, ids=lambda r: r.OPCODE.name)
@pytest.mark.parametrize("extra", [b"\x00", b"\xff\xff\xff"])
def test_trailing_bytes(request_: Request, extra: bytes) -> None:
    wire = encode_request(request_)
    opcode = request_.OPCODE
    body = len(wire) - 17 + len(extra)
    assert rejected(wire + extra) == (
        f"{opcode.name} (0x{opcode:02x}): {len(extra)} trailing bytes; "
        f"minimum body length {MIN_BODY[opcode]}, actual {body}"
    )


# --- strings ---------------------------------------------------------------------------------


def utf8_message(opcode: Opcode, actual: int) -> str:
    return (
        f"{opcode.name} (0x{opcode:02x}): invalid UTF-8 in a string; "
        f"minimum body length {MIN_BODY[opcode]}, actual {actual}"
    )


BAD_UTF8 = [b"\xff", b"\xc3", b"\xc3\x28", b"ok\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf"]

INVALID_UTF8_BODIES: dict[str, tuple[Opcode, Callable[[bytes], bytes]]] = {
    "QUEUE_JOB job_name": (Opcode.QUEUE_JOB, lambda bad: COMMIT + b"\x05" + str8(bad)),
    "CANCEL_JOB job_name": (Opcode.CANCEL_JOB, str8),
    "LOG_METRIC name": (
        Opcode.LOG_METRIC,
        lambda bad: COMMIT + struct.pack(">Id", 1, 1.0) + str8(bad),
    ),
    "LOG_METRICS name": (
        Opcode.LOG_METRICS,
        lambda bad: COMMIT + b"\x00\x02" + point(1, 1.0, b"ok") + point(2, 2.0, bad),
    ),
    "CREATE_EXPERIMENT job_name": (Opcode.CREATE_EXPERIMENT, lambda bad: COMMIT + str8(bad)),
    "QUERY_METRICS name": (Opcode.QUERY_METRICS, lambda bad: COMMIT + str8(bad) + b"\x00" * 24),
    "WATCH_METRICS name": (Opcode.WATCH_METRICS, lambda bad: COMMIT + b"\x00" * 8 + str8(bad)),
    "CLAIM_JOB worker_id": (Opcode.CLAIM_JOB, str8),
    "UPDATE_JOB job_id": (Opcode.UPDATE_JOB, lambda bad: str8(bad) + b"\x01\x00\x00"),
    "UPDATE_JOB error": (
        Opcode.UPDATE_JOB,
        lambda bad: str8("j") + b"\x03" + struct.pack(">H", len(bad)) + bad,
    ),
    "UPDATE_JOB worker_id": (
        Opcode.UPDATE_JOB,
        lambda bad: str8("j") + b"\x01\x00\x00" + str8(bad),
    ),
    "QUEUE_JOB_SPEC job_name": (
        Opcode.QUEUE_JOB_SPEC,
        lambda bad: COMMIT + b"\x05" + str8(bad) + b"\x00\x02{}",
    ),
    "QUEUE_JOB_SPEC spec": (
        Opcode.QUEUE_JOB_SPEC,
        lambda bad: COMMIT + b"\x05" + str8("j") + struct.pack(">H", len(bad)) + bad,
    ),
    "UPDATE_RUN patch": (Opcode.UPDATE_RUN, lambda bad: COMMIT + struct.pack(">H", len(bad)) + bad),
    "LOG_METRICS_AT name": (
        Opcode.LOG_METRICS_AT,
        lambda bad: COMMIT + b"\x00\x02" + stamped(b"ok") + stamped(bad),
    ),
    "LIST_RUNS filter": (Opcode.LIST_RUNS, lambda bad: struct.pack(">H", len(bad)) + bad),
}


@pytest.mark.parametrize("field", list(INVALID_UTF8_BODIES))
@pytest.mark.parametrize("bad", BAD_UTF8, ids=lambda b: b.hex())
def test_invalid_utf8(field: str, bad: bytes) -> None:
    opcode, build = INVALID_UTF8_BODIES[field]
    body = build(bad)
    assert rejected(message(opcode, body)) == utf8_message(opcode, len(body))


def name_error(size: int) -> str:
    return f"metric name must be 1..255 bytes of UTF-8 without 0x00, got {size} bytes"


METRIC_NAME_BODIES: dict[str, tuple[Opcode, Callable[[bytes], bytes]]] = {
    "LOG_METRIC": (Opcode.LOG_METRIC, lambda name: COMMIT + struct.pack(">Id", 1, 1.0) + name),
    "LOG_METRICS first": (
        Opcode.LOG_METRICS,
        lambda name: COMMIT + b"\x00\x02" + struct.pack(">Id", 1, 1.0) + name + point(2, 2.0, b"x"),
    ),
    "LOG_METRICS last": (
        Opcode.LOG_METRICS,
        lambda name: COMMIT + b"\x00\x02" + point(2, 2.0, b"x") + struct.pack(">Id", 1, 1.0) + name,
    ),
}


@pytest.mark.parametrize("where", list(METRIC_NAME_BODIES))
def test_empty_metric_name(where: str) -> None:
    opcode, build = METRIC_NAME_BODIES[where]
    assert rejected(message(opcode, build(str8(b"")))) == name_error(0)


@pytest.mark.parametrize("where", list(METRIC_NAME_BODIES))
@pytest.mark.parametrize("name", [b"\x00", b"lo\x00ss", b"loss\x00", b"\x00" * 255])
def test_metric_name_with_nul(where: str, name: bytes) -> None:
    opcode, build = METRIC_NAME_BODIES[where]
    assert rejected(message(opcode, build(str8(name)))) == name_error(len(name))


def test_metric_name_of_255_bytes_is_accepted() -> None:
    body = COMMIT + struct.pack(">Id", 1, 1.0) + str8("é" * 127 + "x")
    decoded = decode_request(message(Opcode.LOG_METRIC, body))
    assert isinstance(decoded, LogMetric)
    assert len(decoded.name.encode()) == 255


# --- LOG_METRICS count -----------------------------------------------------------------------


def log_metrics_body(count: int, *names: bytes) -> bytes:
    return COMMIT + struct.pack(">H", count) + b"".join(point(1, 0.5, n) for n in names)


def test_log_metrics_count_zero() -> None:
    assert rejected(message(Opcode.LOG_METRICS, log_metrics_body(0))) == (
        "LOG_METRICS count must be 1..65535, got 0"
    )


@pytest.mark.parametrize(("count", "held"), [(2, 1), (3, 2), (65535, 1), (1, 0)])
def test_log_metrics_fewer_records_than_count(count: int, held: int) -> None:
    body = log_metrics_body(count, *[b"loss"] * held)
    assert rejected(message(Opcode.LOG_METRICS, body)) == short_body_message(
        Opcode.LOG_METRICS, len(body)
    )


@pytest.mark.parametrize(("count", "held"), [(1, 2), (2, 3), (1, 5)])
def test_log_metrics_more_records_than_count(count: int, held: int) -> None:
    body = log_metrics_body(count, *[b"loss"] * held)
    extra = (held - count) * len(point(1, 0.5, b"loss"))
    assert rejected(message(Opcode.LOG_METRICS, body)) == (
        f"LOG_METRICS (0x0c): {extra} trailing bytes; minimum body length 22, actual {len(body)}"
    )


def test_log_metrics_count_matching_body() -> None:
    decoded = decode_request(message(Opcode.LOG_METRICS, log_metrics_body(3, b"a", b"b", b"c")))
    assert isinstance(decoded, LogMetrics)
    assert [p.name for p in decoded.metrics] == ["a", "b", "c"]


# --- enum and value rules --------------------------------------------------------------------


PRUNES = [Opcode.PRUNE, Opcode.PRUNE_PREVIEW]


@pytest.mark.parametrize("opcode", PRUNES, ids=lambda op: op.name)
@pytest.mark.parametrize("prune_type", [0, 1])
def test_prune_value_zero(opcode: Opcode, prune_type: int) -> None:
    body = struct.pack(">BI", prune_type, 0)
    assert rejected(message(opcode, body)) == f"{opcode.name} value must be at least 1"


@pytest.mark.parametrize("opcode", PRUNES, ids=lambda op: op.name)
@pytest.mark.parametrize("prune_type", [2, 3, 0x7F, 0xFF])
def test_prune_unknown_type(opcode: Opcode, prune_type: int) -> None:
    body = struct.pack(">BI", prune_type, 10)
    assert rejected(message(opcode, body)) == f"{opcode.name}: invalid prune_type {prune_type}"


@pytest.mark.parametrize("value", [1, 0xFFFFFFFF])
def test_prune_value_bounds_accepted(value: int) -> None:
    decoded = decode_request(message(Opcode.PRUNE, struct.pack(">BI", 1, value)))
    assert decoded == Prune(key_hash=KEY, prune_type=PruneType.OLDER_THAN_DAYS, value=value)
    preview = decode_request(message(Opcode.PRUNE_PREVIEW, struct.pack(">BI", 0, value)))
    assert preview == PrunePreview(key_hash=KEY, prune_type=PruneType.KEEP_NEWEST, value=value)


def test_prune_preview_short_body_is_prunes_error() -> None:
    text = rejected(message(Opcode.PRUNE_PREVIEW, b"\x00\x00\x00\x0a"))
    assert text == "PRUNE_PREVIEW (0x18): body too short; minimum body length 5, actual 4"


def update_job_body(status: int) -> bytes:
    return str8("job-1") + bytes((status,)) + b"\x00\x00"


@pytest.mark.parametrize("status", [0, 4])
def test_update_job_status_not_updatable(status: int) -> None:
    assert rejected(message(Opcode.UPDATE_JOB, update_job_body(status))) == (
        f"UPDATE_JOB status must be 1 running, 2 completed or 3 failed, got {status}"
    )


@pytest.mark.parametrize("status", [5, 9, 0xFF])
def test_update_job_status_unknown(status: int) -> None:
    assert rejected(message(Opcode.UPDATE_JOB, update_job_body(status))) == (
        f"UPDATE_JOB: invalid status {status}"
    )


@pytest.mark.parametrize("status", [1, 2, 3])
def test_update_job_status_accepted(status: int) -> None:
    decoded = decode_request(message(Opcode.UPDATE_JOB, update_job_body(status)))
    assert isinstance(decoded, UpdateJob)
    assert decoded.status is JobStatus(status)


# --- encode side -----------------------------------------------------------------------------


def encode_rejected(request: Request) -> str:
    with pytest.raises(MalformedRequest) as info:
        encode_request(request)
    return info.value.message


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (QueueJob(key_hash=KEY, commit_id=COMMIT, priority=1, job_name="j" * 256), "job_name"),
        (CancelJob(key_hash=KEY, job_name="é" * 128), "job_name"),
        (CreateExperiment(key_hash=KEY, commit_id=COMMIT, job_name="x" * 300), "job_name"),
        (QueryMetrics(key_hash=KEY, commit_id=COMMIT, name="n" * 256), "name"),
        (WatchMetrics(key_hash=KEY, commit_id=COMMIT, name="n" * 256), "name"),
        (ClaimJob(key_hash=KEY, worker_id="w" * 256), "worker_id"),
        (UpdateJob(key_hash=KEY, job_id="i" * 256, status=JobStatus.RUNNING), "job_id"),
        (
            UpdateJob(key_hash=KEY, job_id="i", status=JobStatus.FAILED, error="e" * 65536),
            "error",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_encode_rejects_long_string(request_: Request, field: str) -> None:
    size = len(getattr(request_, field).encode())
    assert encode_rejected(request_) == f"{field} too long: {size} bytes"


def test_encode_accepts_longest_strings() -> None:
    request = UpdateJob(key_hash=KEY, job_id="i" * 255, status=JobStatus.FAILED, error="e" * 65535)
    assert decode_request(encode_request(request)) == request


@pytest.mark.parametrize("name", ["", "x" * 256, "é" * 128, "a\0b", "\0"])
def test_metric_name_rules_at_construction(name: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        LogMetric(key_hash=KEY, commit_id=COMMIT, step=0, value=0.0, name=name)
    assert info.value.message == name_error(len(name.encode()))
    with pytest.raises(MalformedRequest):
        LogMetrics(key_hash=KEY, commit_id=COMMIT, metrics=(MetricPoint(0, 0.0, name),))


def test_metric_name_that_is_not_utf8() -> None:
    with pytest.raises(MalformedRequest) as info:
        check_metric_name("bad\ud800")
    assert info.value.message == "metric name is not valid UTF-8"


def test_check_metric_name_returns_bytes() -> None:
    assert check_metric_name("héllo") == "héllo".encode()


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_encode_rejects_key_hash_size(size: int) -> None:
    request = Status(key_hash=b"k" * size)
    assert encode_rejected(request) == "api_key_hash must be 16 bytes"


@pytest.mark.parametrize("size", [0, 19, 21, 40])
@pytest.mark.parametrize(
    "make",
    [
        lambda c: QueueJob(key_hash=KEY, commit_id=c, priority=0, job_name=""),
        lambda c: LogMetric(key_hash=KEY, commit_id=c, step=0, value=0.0, name="x"),
        lambda c: GetExperiment(key_hash=KEY, commit_id=c),
        lambda c: LogMetrics(key_hash=KEY, commit_id=c, metrics=(MetricPoint(0, 0.0, "x"),)),
        lambda c: CreateExperiment(key_hash=KEY, commit_id=c, job_name=""),
        lambda c: QueryMetrics(key_hash=KEY, commit_id=c),
        lambda c: WatchMetrics(key_hash=KEY, commit_id=c),
    ],
)
def test_encode_rejects_commit_size(make: Callable[[bytes], Request], size: int) -> None:
    assert encode_rejected(make(b"c" * size)) == f"commit_id must be 20 bytes, got {size}"


@pytest.mark.parametrize("count", [0, 65536])
def test_log_metrics_count_bounds_at_construction(count: int) -> None:
    metrics = tuple(MetricPoint(0, 0.0, "x") for _ in range(count))
    with pytest.raises(MalformedRequest) as info:
        LogMetrics(key_hash=KEY, commit_id=COMMIT, metrics=metrics)
    assert info.value.message == f"LOG_METRICS count must be 1..65535, got {count}"


def test_construction_rules() -> None:
    with pytest.raises(MalformedRequest, match="PRUNE value must be at least 1"):
        Prune(key_hash=KEY, prune_type=PruneType.KEEP_NEWEST, value=0)
    with pytest.raises(MalformedRequest, match="PRUNE_PREVIEW value must be at least 1"):
        PrunePreview(key_hash=KEY, prune_type=PruneType.KEEP_NEWEST, value=0)
    for status in set(JobStatus) - UPDATABLE_JOB_STATUSES:
        with pytest.raises(MalformedRequest, match="UPDATE_JOB status must be"):
            UpdateJob(key_hash=KEY, job_id="j", status=status)


# --- fuzzing: only ProtocolError may come out ------------------------------------------------


def decode_or_protocol_error(wire: bytes) -> None:
    try:
        decode_request(wire)
    except ProtocolError as exc:
        assert isinstance(exc, MalformedRequest)
        assert isinstance(exc.code, ErrorCode)
        assert exc.code is ErrorCode.INVALID_REQUEST


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(wire: bytes) -> None:
    decode_or_protocol_error(wire)


@FUZZ
@given(opcode=st.sampled_from(sorted(REQUEST_TYPES)), body=st.binary(max_size=400))
def test_fuzz_known_opcode_random_body(opcode: int, body: bytes) -> None:
    decode_or_protocol_error(message(opcode, body))


@FUZZ
@given(request=any_request, data=st.data())
def test_fuzz_valid_message_cut_and_tail(request: Request, data: st.DataObject) -> None:
    wire = encode_request(request)
    cut = data.draw(st.integers(0, len(wire)), label="cut")
    tail = data.draw(st.binary(max_size=64), label="tail")
    decode_or_protocol_error(wire[:cut] + tail)


@FUZZ
@given(request=any_request, data=st.data())
def test_fuzz_valid_message_with_flipped_byte(request: Request, data: st.DataObject) -> None:
    wire = bytearray(encode_request(request))
    index = data.draw(st.integers(0, len(wire) - 1), label="index")
    wire[index] = data.draw(st.integers(0, 255), label="byte")
    decode_or_protocol_error(bytes(wire))


# --- record_tails: the LOG_METRIC / LOG_METRICS fast path ------------------------------------


def check_record_tails(wire: bytes) -> None:
    """record_tails answers exactly when decode_request gives a metric request, and agrees."""
    fast = record_tails(wire)
    try:
        request = decode_request(wire)
    except MalformedRequest:
        request = None
    if isinstance(request, LogMetric | LogMetrics):
        assert fast == (request.key_hash, request.commit_id, request.tails())
    else:
        assert fast is None


RECORD_TAILS_CASES = {
    "empty": b"",
    "other opcode": encode_request(VALID_REQUESTS[1]),
    "log_metric opcode only": b"\x0a",
    "log_metric no name": message(Opcode.LOG_METRIC, COMMIT + struct.pack(">IdB", 1, 1.0, 0)),
    "log_metric valid": encode_request(VALID_REQUESTS[4]),
    "log_metric length too long": message(
        Opcode.LOG_METRIC, COMMIT + struct.pack(">IdB", 1, 1.0, 5) + b"loss"
    ),
    "log_metric length too short": message(
        Opcode.LOG_METRIC, COMMIT + struct.pack(">IdB", 1, 1.0, 3) + b"loss"
    ),
    "log_metric nul in name": message(Opcode.LOG_METRIC, COMMIT + point(1, 1.0, b"lo\x00s")),
    "log_metric bad utf-8": message(Opcode.LOG_METRIC, COMMIT + point(1, 1.0, b"ok\xe2\x82")),
    "log_metrics opcode only": b"\x0c",
    "log_metrics no count": message(Opcode.LOG_METRICS, COMMIT + b"\x00"),
    "log_metrics valid": encode_request(VALID_REQUESTS[6]),
    "log_metrics count zero": message(Opcode.LOG_METRICS, log_metrics_body(0)),
    "log_metrics count zero, trailing": message(Opcode.LOG_METRICS, log_metrics_body(0, b"a")),
    "log_metrics fewer points": message(Opcode.LOG_METRICS, log_metrics_body(2, b"a")),
    "log_metrics more points": message(Opcode.LOG_METRICS, log_metrics_body(1, b"a", b"b")),
    "log_metrics name past end": message(Opcode.LOG_METRICS, log_metrics_body(1, b"abc")[:-1]),
    "log_metrics empty name": message(Opcode.LOG_METRICS, log_metrics_body(2, b"a", b"")),
    "log_metrics nul in name": message(Opcode.LOG_METRICS, log_metrics_body(2, b"a", b"b\x00")),
    "log_metrics bad utf-8": message(Opcode.LOG_METRICS, log_metrics_body(2, b"\xc3", b"\xa9")),
    "log_metrics bad utf-8 last": message(
        Opcode.LOG_METRICS, log_metrics_body(2, b"ok", b"\xed\xa0\x80")
    ),
}


@pytest.mark.parametrize("wire", list(RECORD_TAILS_CASES.values()), ids=list(RECORD_TAILS_CASES))
def test_record_tails_cases(wire: bytes) -> None:
    check_record_tails(wire)


def test_record_tails_vector() -> None:
    wire = bytes.fromhex(
        "0a5ba7dccf22514f45ae84bfb8b12cd02e0123456789abcdef0123456789abcdef01234567"
        "000000073fd0000000000000046c6f7373"
    )
    assert wire == encode_request(VALID_REQUESTS[4])
    assert record_tails(wire) == (
        KEY,
        COMMIT,
        [bytes.fromhex("000000073fd0000000000000046c6f7373")],
    )


metric_wires = st.one_of(REQUEST_STRATEGIES[LogMetric], REQUEST_STRATEGIES[LogMetrics]).map(
    encode_request
)


@st.composite
def changed_metric_wires(draw: st.DrawFn) -> bytes:
    """A valid LOG_METRIC / LOG_METRICS message cut, extended, or with one byte replaced."""
    wire = bytearray(draw(metric_wires))
    if draw(st.booleans()):
        index = draw(st.integers(0, len(wire) - 1))
        wire[index] = draw(u8)
    cut = draw(st.integers(0, len(wire)))
    return bytes(wire[:cut]) + draw(st.binary(max_size=64))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=400),
        st.tuples(st.sampled_from([b"\x0a", b"\x0c"]), st.binary(max_size=400)).map(b"".join),
        metric_wires,
        changed_metric_wires(),
    )
)
def test_record_tails_matches_decode_request(wire: bytes) -> None:
    check_record_tails(wire)


# --- LOG_METRICS_AT: its decode rules and its fast path (records_at) ---------------------------


def log_at_body(count: int, *records: bytes) -> bytes:
    return COMMIT + struct.pack(">H", count) + b"".join(records)


def test_log_metrics_at_count_zero() -> None:
    for body in (log_at_body(0), log_at_body(0, stamped(b"a"))):
        assert rejected(message(Opcode.LOG_METRICS_AT, body)) == (
            "LOG_METRICS_AT count must be 1..65535, got 0"
        )


@pytest.mark.parametrize(("count", "held"), [(2, 1), (3, 2), (65535, 1), (1, 0)])
def test_log_metrics_at_fewer_records_than_count(count: int, held: int) -> None:
    body = log_at_body(count, *[stamped(b"loss")] * held)
    assert rejected(message(Opcode.LOG_METRICS_AT, body)) == short_body_message(
        Opcode.LOG_METRICS_AT, len(body)
    )


def test_log_metrics_at_more_records_than_count() -> None:
    body = log_at_body(1, stamped(b"loss"), stamped(b"acc"))
    assert rejected(message(Opcode.LOG_METRICS_AT, body)) == (
        f"LOG_METRICS_AT (0x15): 24 trailing bytes; minimum body length 22, actual {len(body)}"
    )


@pytest.mark.parametrize(
    "timestamp", [0, MIN_TIMESTAMP - 1, MAX_TIMESTAMP, MAX_TIMESTAMP + 1, 2**63, 2**64 - 1]
)
@pytest.mark.parametrize("index", [0, 1])
def test_log_metrics_at_timestamp_outside_the_plausible_range(timestamp: int, index: int) -> None:
    records = [stamped(b"a"), stamped(b"b")]
    records[index] = stamped(b"x", timestamp)
    assert rejected(message(Opcode.LOG_METRICS_AT, log_at_body(2, *records))) == (
        f"LOG_METRICS_AT record {index}: timestamp {timestamp} outside 946684800..4294967295"
    )


@pytest.mark.parametrize("timestamp", [MIN_TIMESTAMP, MAX_TIMESTAMP - 1])
def test_log_metrics_at_timestamp_bounds_accepted(timestamp: int) -> None:
    decoded = decode_request(
        message(Opcode.LOG_METRICS_AT, log_at_body(1, stamped(b"a", timestamp)))
    )
    assert isinstance(decoded, LogMetricsAt)
    assert max_timestamp(decoded.records) == timestamp


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("name", [b"", b"\x00", b"lo\x00ss", b"\x00" * 255])
def test_log_metrics_at_bad_metric_name(index: int, name: bytes) -> None:
    records = [stamped(b"a"), stamped(b"b")]
    records[index] = stamped(name)
    assert rejected(message(Opcode.LOG_METRICS_AT, log_at_body(2, *records))) == (
        f"LOG_METRICS_AT record {index}: metric name must be 1..255 bytes of UTF-8 "
        f"without 0x00, got {len(name)} bytes"
    )


def test_log_metrics_at_construction_rules() -> None:
    for count in (0, 65536):
        with pytest.raises(MalformedRequest, match=f"count must be 1..65535, got {count}"):
            LogMetricsAt(key_hash=KEY, commit_id=COMMIT, count=count, records=stamped(b"a"))
    with pytest.raises(MalformedRequest, match="22 bytes after 1 records"):
        LogMetricsAt(key_hash=KEY, commit_id=COMMIT, count=1, records=stamped(b"a") * 2)


def check_records_at(wire: bytes) -> None:
    """records_at answers exactly when decode_request gives a LOG_METRICS_AT, and agrees."""
    fast = records_at(wire)
    try:
        request = decode_request(wire)
    except MalformedRequest:
        request = None
    if isinstance(request, LogMetricsAt):
        latest = max_timestamp(request.records)
        assert fast == (request.key_hash, request.commit_id, request.records, request.count, latest)
    else:
        assert fast is None


def at_message(count: int, *records: bytes) -> bytes:
    return message(Opcode.LOG_METRICS_AT, log_at_body(count, *records))


RECORDS_AT_CASES = {
    "empty": b"",
    "other opcode": encode_request(VALID_REQUESTS[6]),
    "opcode only": b"\x15",
    "no count": message(Opcode.LOG_METRICS_AT, COMMIT + b"\x00"),
    "valid": encode_request(VALID_REQUESTS[16]),
    "one record": at_message(1, stamped(b"loss")),
    "count zero": at_message(0),
    "count zero, trailing": at_message(0, stamped(b"a")),
    "fewer records": at_message(2, stamped(b"a")),
    "more records": at_message(1, stamped(b"a"), stamped(b"b")),
    "cut in a head": at_message(1, stamped(b"abc")[:10]),
    "name past end": at_message(1, stamped(b"abc")[:-1]),
    "empty name": at_message(2, stamped(b"a"), stamped(b"")),
    "nul in name": at_message(2, stamped(b"a"), stamped(b"b\x00")),
    "bad utf-8": at_message(2, stamped(b"\xc3"), stamped(b"\xa9")),
    "bad utf-8 last": at_message(2, stamped(b"ok"), stamped(b"\xed\xa0\x80")),
    "timestamp too early": at_message(2, stamped(b"a"), stamped(b"b", MIN_TIMESTAMP - 1)),
    "timestamp too late": at_message(2, stamped(b"a", MAX_TIMESTAMP), stamped(b"b")),
    "timestamp bounds": at_message(
        2, stamped(b"a", MAX_TIMESTAMP - 1), stamped(b"b", MIN_TIMESTAMP)
    ),
    "latest first": at_message(
        3, stamped(b"a", 2000000000), stamped(b"b"), stamped(b"c", 999999999)
    ),
}


@pytest.mark.parametrize("wire", list(RECORDS_AT_CASES.values()), ids=list(RECORDS_AT_CASES))
def test_records_at_cases(wire: bytes) -> None:
    check_records_at(wire)


def test_records_at_vector() -> None:
    records = "000000006b08be45 00000000 3ff0000000000000 046c6f7373" + (
        "000000006b08be46 00000001 3fe0000000000000 046c6f7373"
    )
    wire = bytes.fromhex(
        "15 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567 0002"
        + records
    )
    assert records_at(wire) == (KEY, COMMIT, bytes.fromhex(records), 2, 1795735110)
    assert records_at(RECORDS_AT_CASES["valid"]) is not None
    assert record_tails(wire) is None


@st.composite
def changed_at_wires(draw: st.DrawFn) -> bytes:
    """A valid LOG_METRICS_AT message cut, extended, or with one byte replaced."""
    wire = bytearray(encode_request(draw(REQUEST_STRATEGIES[LogMetricsAt])))
    if draw(st.booleans()):
        index = draw(st.integers(0, len(wire) - 1))
        wire[index] = draw(u8)
    cut = draw(st.integers(len(wire) // 2, len(wire)))
    return bytes(wire[:cut]) + draw(st.binary(max_size=8))


@FUZZ
@given(
    st.one_of(
        st.tuples(st.just(b"\x15"), st.binary(max_size=400)).map(b"".join),
        REQUEST_STRATEGIES[LogMetricsAt].map(encode_request),
        changed_at_wires(),
    )
)
def test_records_at_matches_decode_request(wire: bytes) -> None:
    check_records_at(wire)
    check_record_tails(wire)


def test_log_metrics_at_head_is_the_encoded_requests_head() -> None:
    records = encode_record(1795735109, 0, 1.0, b"loss") + encode_record(
        1795735110, 1, 0.5, b"loss"
    )
    request = LogMetricsAt(key_hash=KEY, commit_id=COMMIT, count=2, records=records)
    assert log_metrics_at_head(KEY, COMMIT, 2) + records == encode_request(request)
    with pytest.raises(MalformedRequest, match=r"count must be 1\.\.65535, got 0"):
        log_metrics_at_head(KEY, COMMIT, 0)
