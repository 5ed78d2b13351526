"""Golden bytes of docs/PROTOCOL.md, checked in both directions.

The hex is copied here on purpose, so these tests do not depend on the document.
"""

from typing import cast

import pytest

from fetchml.protocol.enums import ErrorCode, JobStatus, LogLevel, Opcode, PruneType
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.metrics import (
    MetricRecord,
    MetricsPage,
    decode_metrics_payload,
    decode_records,
    encode_metrics_payload,
    encode_record,
    max_timestamp,
)
from fetchml.protocol.records import Metadata, decode_metadata, encode_metadata
from fetchml.protocol.requests import (
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


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


KEY = unhex("5ba7dccf22514f45ae84bfb8b12cd02e")
COMMIT = unhex("0123456789abcdef0123456789abcdef01234567")
TS = 1764000000  # 0000000069248100
JOB_ID = "6f1c0e2a-8d53-4a8e-9b0e-3c1f5a7d2b10"

REQUEST_VECTORS = [
    pytest.param(
        QueueJob(key_hash=KEY, commit_id=COMMIT, priority=5, job_name="train"),
        "01 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567"
        " 05 05 747261696e",
        id="QUEUE_JOB",
    ),
    pytest.param(Status(key_hash=KEY), "02 5ba7dccf22514f45ae84bfb8b12cd02e", id="STATUS"),
    pytest.param(
        CancelJob(key_hash=KEY, job_name="train"),
        "03 5ba7dccf22514f45ae84bfb8b12cd02e 05 747261696e",
        id="CANCEL_JOB",
    ),
    pytest.param(
        Prune(key_hash=KEY, prune_type=PruneType.KEEP_NEWEST, value=10),
        "04 5ba7dccf22514f45ae84bfb8b12cd02e 00 0000000a",
        id="PRUNE-keep-newest",
    ),
    pytest.param(
        Prune(key_hash=KEY, prune_type=PruneType.OLDER_THAN_DAYS, value=30),
        "04 5ba7dccf22514f45ae84bfb8b12cd02e 01 0000001e",
        id="PRUNE-older-than",
    ),
    pytest.param(
        LogMetric(key_hash=KEY, commit_id=COMMIT, step=7, value=0.25, name="loss"),
        "0a 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567"
        " 00000007 3fd0000000000000 04 6c6f7373",
        id="LOG_METRIC",
    ),
    pytest.param(
        GetExperiment(key_hash=KEY, commit_id=COMMIT),
        "0b 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567",
        id="GET_EXPERIMENT",
    ),
    pytest.param(
        LogMetrics(
            key_hash=KEY,
            commit_id=COMMIT,
            metrics=(MetricPoint(1, 0.5, "loss"), MetricPoint(1, 0.9, "acc")),
        ),
        "0c 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567 0002"
        " 00000001 3fe0000000000000 04 6c6f7373 00000001 3feccccccccccccd 03 616363",
        id="LOG_METRICS",
    ),
    pytest.param(
        CreateExperiment(key_hash=KEY, commit_id=COMMIT, job_name="train"),
        "0d 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567"
        " 05 747261696e",
        id="CREATE_EXPERIMENT",
    ),
    pytest.param(
        ListExperiments(key_hash=KEY),
        "0e 5ba7dccf22514f45ae84bfb8b12cd02e",
        id="LIST_EXPERIMENTS",
    ),
    pytest.param(
        QueryMetrics(
            key_hash=KEY,
            commit_id=COMMIT,
            name="loss",
            step_from=0,
            step_to=4294967295,
            max_points=0,
            after=0,
            limit=1000,
        ),
        "0f 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567"
        " 04 6c6f7373 00000000 ffffffff 00000000 0000000000000000 000003e8",
        id="QUERY_METRICS",
    ),
    pytest.param(
        WatchMetrics(key_hash=KEY, commit_id=COMMIT, from_index=100, name=""),
        "10 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567"
        " 0000000000000064 00",
        id="WATCH_METRICS",
    ),
    pytest.param(
        ClaimJob(key_hash=KEY, worker_id="gpu-01"),
        "11 5ba7dccf22514f45ae84bfb8b12cd02e 06 6770752d3031",
        id="CLAIM_JOB",
    ),
    pytest.param(
        UpdateJob(key_hash=KEY, job_id=JOB_ID, status=JobStatus.COMPLETED, error=""),
        "12 5ba7dccf22514f45ae84bfb8b12cd02e 24"
        " 36663163306532612d386435332d346138652d396230652d336331663561376432623130 02 0000",
        id="UPDATE_JOB",
    ),
    pytest.param(
        UpdateJob(
            key_hash=KEY, job_id=JOB_ID, status=JobStatus.RUNNING, error="", worker_id="gpu-01"
        ),
        "12 5ba7dccf22514f45ae84bfb8b12cd02e 24"
        " 36663163306532612d386435332d346138652d396230652d336331663561376432623130 01 0000"
        " 06 6770752d3031",
        id="UPDATE_JOB-worker_id",
    ),
    pytest.param(WhoAmI(key_hash=KEY), "13 5ba7dccf22514f45ae84bfb8b12cd02e", id="WHOAMI"),
    pytest.param(
        PrunePreview(key_hash=KEY, prune_type=PruneType.KEEP_NEWEST, value=10),
        "18 5ba7dccf22514f45ae84bfb8b12cd02e 00 0000000a",
        id="PRUNE_PREVIEW",
    ),
    pytest.param(
        UpdateRun(key_hash=KEY, commit_id=COMMIT, patch='{"status":"running","params":{"lr":0.1}}'),
        "14 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567 0028"
        " 7b22737461747573223a2272756e6e696e67222c22706172616d73223a7b226c72223a302e317d7d",
        id="UPDATE_RUN",
    ),
    pytest.param(
        LogMetricsAt(
            key_hash=KEY,
            commit_id=COMMIT,
            count=2,
            records=encode_record(1795735109, 0, 1.0, b"loss")
            + encode_record(1795735110, 1, 0.5, b"loss"),
        ),
        "15 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567 0002"
        " 000000006b08be45 00000000 3ff0000000000000 046c6f7373"
        " 000000006b08be46 00000001 3fe0000000000000 046c6f7373",
        id="LOG_METRICS_AT",
    ),
    pytest.param(
        QueueJobSpec(
            key_hash=KEY,
            commit_id=COMMIT,
            priority=5,
            job_name="train",
            spec='{"command":["python","train.py"]}',
        ),
        "16 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567 05 05"
        " 747261696e 0021 7b22636f6d6d616e64223a5b22707974686f6e222c22747261696e2e7079225d7d",
        id="QUEUE_JOB_SPEC",
    ),
    pytest.param(
        ListRuns(key_hash=KEY, filter=""),
        "17 5ba7dccf22514f45ae84bfb8b12cd02e 0000",
        id="LIST_RUNS-empty",
    ),
    pytest.param(
        ListRuns(key_hash=KEY, filter='{"status":"running","limit":10}'),
        "17 5ba7dccf22514f45ae84bfb8b12cd02e 001f"
        " 7b22737461747573223a2272756e6e696e67222c226c696d6974223a31307d",
        id="LIST_RUNS-filter",
    ),
]

RESPONSE_VECTORS = [
    pytest.param(Success(timestamp=TS), "00 0000000069248100 00", id="SUCCESS-empty"),
    pytest.param(Success(timestamp=TS, message="2"), "00 0000000069248100 01 32", id="SUCCESS-2"),
    pytest.param(
        Error(timestamp=TS, code=ErrorCode.AUTHENTICATION_FAILED, message="Invalid API key"),
        "01 0000000069248100 02 0f 496e76616c696420415049206b6579 00",
        id="ERROR-auth",
    ),
    pytest.param(
        Error(
            timestamp=TS,
            code=ErrorCode.INVALID_REQUEST,
            message="unsupported opcode 0x06",
            details="",
        ),
        "01 0000000069248100 01 17 756e737570706f72746564206f70636f64652030783036 00",
        id="ERROR-unsupported",
    ),
    pytest.param(
        Progress(timestamp=TS, progress_type=1, value=3, total=10, message="pruning"),
        "02 0000000069248100 01 00000003 0000000a 07 7072756e696e67",
        id="PROGRESS",
    ),
    pytest.param(
        StatusReport(timestamp=TS, status_json="{}"),
        "03 0000000069248100 02 7b7d",
        id="STATUS",
    ),
    pytest.param(
        Data(timestamp=TS, data_type="whoami", payload=b'{"user":"alice"}'),
        "04 0000000069248100 06 77686f616d69 10 7b2275736572223a22616c696365227d",
        id="DATA-whoami",
    ),
    pytest.param(
        Log(timestamp=TS, level=LogLevel.WARNING, message="disk 91% full"),
        "05 0000000069248100 02 0d 6469736b203931252066756c6c",
        id="LOG",
    ),
]


@pytest.mark.parametrize(("request_", "wire"), REQUEST_VECTORS)
def test_request_encodes_to_vector(request_: Request, wire: str) -> None:
    assert encode_request(request_).hex() == unhex(wire).hex()


@pytest.mark.parametrize(("request_", "wire"), REQUEST_VECTORS)
def test_request_vector_decodes(request_: Request, wire: str) -> None:
    decoded = decode_request(unhex(wire))
    assert type(decoded) is type(request_)
    assert decoded == request_


def test_request_vectors_cover_every_opcode() -> None:
    assert {cast(Request, p.values[0]).OPCODE for p in REQUEST_VECTORS} == set(Opcode)


def _vector(name: str | None) -> str:
    """The hex of the request vector with that id."""
    return next(cast(str, p.values[1]) for p in REQUEST_VECTORS if p.id == name)


def test_decoded_enum_fields_are_enums() -> None:
    prune = decode_request(unhex("04 5ba7dccf22514f45ae84bfb8b12cd02e 01 0000001e"))
    assert isinstance(prune, Prune)
    assert prune.prune_type is PruneType.OLDER_THAN_DAYS
    update = decode_request(unhex(_vector("UPDATE_JOB")))
    assert isinstance(update, UpdateJob)
    assert update.status is JobStatus.COMPLETED


def test_opcode_0x19_is_not_known() -> None:
    with pytest.raises(MalformedRequest, match=r"^unknown opcode 0x19$"):
        decode_request(unhex("19 5ba7dccf22514f45ae84bfb8b12cd02e"))


def test_log_metrics_at_records_are_metrics_bin_records() -> None:
    request = decode_request(unhex(_vector("LOG_METRICS_AT")))
    assert isinstance(request, LogMetricsAt)
    assert decode_records(request.records) == [
        MetricRecord(1795735109, 0, 1.0, "loss"),
        MetricRecord(1795735110, 1, 0.5, "loss"),
    ]
    assert max_timestamp(request.records) == 1795735110


def test_log_metrics_count_and_commit_hex() -> None:
    request = decode_request(unhex(_vector("LOG_METRICS")))
    assert isinstance(request, LogMetrics)
    assert request.count == 2
    assert request.commit_hex == "0123456789abcdef0123456789abcdef01234567"
    assert Status(key_hash=KEY).commit_hex == ""


@pytest.mark.parametrize(("response", "wire"), RESPONSE_VECTORS)
def test_response_encodes_to_vector(response: Response, wire: str) -> None:
    assert encode_response(response).hex() == unhex(wire).hex()


@pytest.mark.parametrize(("response", "wire"), RESPONSE_VECTORS)
def test_response_vector_decodes(response: Response, wire: str) -> None:
    decoded = decode_response(unhex(wire))
    assert type(decoded) is type(response)
    assert decoded == response


METRICS_PAYLOAD = "0000000000000000 00000001 000000006b08be45 00000007 3fd0000000000000 04 6c6f7373"


def test_metrics_payload_vector_encodes() -> None:
    record = encode_record(1795735109, 7, 0.25, b"loss")
    assert encode_metrics_payload(0, 1, record).hex() == unhex(METRICS_PAYLOAD).hex()


def test_metrics_payload_vector_decodes() -> None:
    page = decode_metrics_payload(unhex(METRICS_PAYLOAD))
    assert page == MetricsPage(0, [MetricRecord(1795735109, 7, 0.25, "loss")])
    assert page.next == 0


def test_metrics_payload_inside_data_packet() -> None:
    payload = unhex(METRICS_PAYLOAD)
    wire = encode_response(Data(timestamp=TS, data_type="metrics", payload=payload))
    assert wire[:17].hex() == "04" + "0000000069248100" + "07" + b"metrics".hex()
    assert wire[17] == len(payload) == 37
    decoded = decode_response(wire)
    assert isinstance(decoded, Data)
    assert decode_metrics_payload(decoded.payload).records[0].name == "loss"


@pytest.mark.parametrize(
    ("value", "wire"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (200, "c801"), (300, "ac02")],
)
def test_uvarint_vectors(value: int, wire: str) -> None:
    assert encode_uvarint(value).hex() == wire
    assert decode_uvarint(unhex(wire), 0) == (value, len(wire) // 2)


RECORD_VECTOR = "000000006b08be45 00000000 3ff0000000000000 04 6c6f7373"


def test_record_vector() -> None:
    raw = encode_record(1795735109, 0, 1.0, b"loss")
    assert raw.hex() == unhex(RECORD_VECTOR).hex()
    assert len(raw) == 25
    assert decode_records(unhex(RECORD_VECTOR)) == [MetricRecord(1795735109, 0, 1.0, "loss")]


META_VECTOR = (
    "0100000000692481002830313233343536373839616263646566303132333435363738396162636465663031"
    "323334353637117265736e657435302d626173656c696e6505616c696365"
)
META = Metadata(
    commit_id="0123456789abcdef0123456789abcdef01234567",
    timestamp=1764000000,
    job_name="resnet50-baseline",
    user="alice",
)


def test_metadata_vector_encodes() -> None:
    assert encode_metadata(META).hex() == META_VECTOR


def test_metadata_vector_decodes() -> None:
    assert decode_metadata(unhex(META_VECTOR)) == META
