"""Atheris (libFuzzer) harness for the pure codec: run it through scripts/fuzz.

Every input goes to protocol.requests.decode_request and protocol.metrics.record_tails and
records_at (the metric-logging fast path) and to protocol.metrics.scan, plus the meta.bin and
response decoders. Any exception but protocol.errors.ProtocolError is a crash, and
so is a broken invariant:

* record_tails accepts exactly the LOG_METRIC / LOG_METRICS that decode_request
  accepts, with the same key, commit and record tails; records_at likewise the
  LOG_METRICS_AT, with the same records, count and latest timestamp;
* a decoded request encodes back to the same bytes;
* scan's valid prefix decodes to exactly its record count, scanning from any record
  boundary inside it ends at the same place, and when scan says the prefix cannot
  grow (`incomplete` false), appending a valid record indeed does not extend it.

Without a corpus directory argument, a temporary one is seeded with valid encodings.
"""

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from fetchml.protocol.enums import ErrorCode, JobStatus
    from fetchml.protocol.errors import ProtocolError
    from fetchml.protocol.metrics import (
        decode_metrics_payload,
        encode_metrics_payload,
        encode_record,
        iter_records,
        max_timestamp,
        record_tails,
        records_at,
        scan,
    )
    from fetchml.protocol.records import Metadata, decode_metadata, encode_metadata
    from fetchml.protocol.requests import (
        LogMetric,
        LogMetrics,
        LogMetricsAt,
        MetricPoint,
        QueryMetrics,
        QueueJob,
        Request,
        UpdateJob,
        WatchMetrics,
        decode_request,
        encode_request,
    )
    from fetchml.protocol.responses import Data, Error, Success, decode_response, encode_response

VALID = encode_record(1795735109, 1, 1.0, b"loss")


def check_request(data: bytes) -> None:
    try:
        request = decode_request(data)
    except ProtocolError:
        request = None
    fast = record_tails(data)
    if isinstance(request, LogMetric | LogMetrics):
        assert fast is not None, "record_tails refused a valid log request"
        key, commit, tails = fast
        assert (key, commit, tails) == (request.key_hash, request.commit_id, request.tails())
    else:
        assert fast is None, "record_tails accepted what decode_request refuses"
    at = records_at(data)
    if isinstance(request, LogMetricsAt):
        latest = max_timestamp(request.records)
        expected = (request.key_hash, request.commit_id, request.records, request.count, latest)
        assert at == expected, "records_at differs from decode_request"
    else:
        assert at is None, "records_at accepted what decode_request refuses"
    if request is not None:
        assert encode_request(request) == data, "decode/encode round trip differs"


def check_records(data: bytes) -> None:
    result = scan(data)
    assert 0 <= result.end <= len(data)
    pairs = iter_records(data, 0, result.end)  # the valid prefix always decodes
    assert len(pairs) == result.records, "scan count differs from the decoded records"
    if pairs:
        index = len(pairs) // 2
        again = scan(data, pairs[index][0])
        assert (again.end, again.records) == (result.end, result.records - index)
    if not result.incomplete:
        assert scan(data + VALID).end == result.end, "more bytes extended a final prefix"


def check_other_decoders(data: bytes) -> None:
    for decode in (decode_metadata, decode_response, decode_metrics_payload):
        with contextlib.suppress(ProtocolError):
            decode(data)


def test_one_input(data: bytes) -> None:
    check_request(data)
    check_records(data)
    check_other_decoders(data)


def seeds() -> list[bytes]:
    key = bytes(range(16))
    commit = bytes(range(20, 40))
    points = (MetricPoint(0, 0.5, "loss"), MetricPoint(1, float("nan"), "acc/top1"))
    requests: list[Request] = [
        LogMetric(key_hash=key, commit_id=commit, step=7, value=1.5, name="loss"),
        LogMetrics(key_hash=key, commit_id=commit, metrics=points),
        QueryMetrics(key_hash=key, commit_id=commit, name="loss", max_points=10),
        WatchMetrics(key_hash=key, commit_id=commit, from_index=3, name=""),
        QueueJob(key_hash=key, commit_id=commit, priority=5, job_name="resnet"),
        UpdateJob(key_hash=key, job_id="j-1", status=JobStatus.FAILED, error="oom"),
    ]
    records = b"".join(encode_record(1795735109, n, n / 3, b"m%d" % n) for n in range(4))
    requests.append(LogMetricsAt(key_hash=key, commit_id=commit, count=4, records=records))
    meta = encode_metadata(
        Metadata(commit_id=commit.hex(), timestamp=1764000000, job_name="j", user="alice")
    )
    responses = [
        encode_response(Success(timestamp=1764000000, message="3")),
        encode_response(
            Error(timestamp=1, code=ErrorCode.STORAGE_ERROR, message="metrics file corrupt")
        ),
        encode_response(
            Data(timestamp=1, data_type="metrics", payload=encode_metrics_payload(4, 4, records))
        ),
    ]
    return [
        *(encode_request(r) for r in requests),
        records,
        records + encode_record(1795735109, 9, 0.0, b"")[:15],
        encode_record(1795735109, 9, 0.0, b"") + VALID,
        meta,
        *responses,
    ]


def main() -> None:
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="fetchml-fuzz-corpus-"))
        for n, seed in enumerate(seeds()):
            (corpus / f"seed-{n:02d}").write_bytes(seed)
        argv.append(str(corpus))
        print(f"fuzz_harness: seed corpus in {corpus}", file=sys.stderr)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
