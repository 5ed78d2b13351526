"""docs/PROTOCOL.md checked against the codec, so the document cannot drift from the code.

Every hex example of the document is a table row `| KIND | `FIELDS` | `HEX` |`: KIND is
an opcode name (a request), `rejected` (a request the decoder refuses), a packet type
name and `packet` (a response), or one of OTHER_KINDS; FIELDS is `name=<JSON value>` pairs. Each row
must decode to its fields and its fields must encode to its bytes. The JSON examples
(fenced blocks tagged `json <shape>`) must have the keys, in order, of what a real
daemon sends.
"""

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fetchml.protocol.enums import ErrorCode, JobStatus, LogLevel, Opcode, PacketType, PruneType
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.keys import key_hash
from fetchml.protocol.metrics import (
    MetricRecord,
    decode_metrics_payload,
    decode_records,
    encode_metrics_payload,
    encode_record,
    max_timestamp,
    record_tails,
    records_at,
)
from fetchml.protocol.records import Metadata, decode_metadata, encode_metadata
from fetchml.protocol.requests import (
    REQUEST_TYPES,
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    ListRuns,
    LogMetrics,
    MetricPoint,
    PrunePreview,
    QueueJob,
    QueueJobSpec,
    Status,
    UpdateRun,
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
from fetchml.protocol.shapes import dumps
from tests.support.keys import hash_of

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "PROTOCOL.md"
EXAMPLE_KEY = "fml_example_key_do_not_use"
KEY = key_hash(EXAMPLE_KEY)
TIMESTAMP = 1764000000
RUN_PATCH = '{"status": "running", "params": {"lr": 0.1, "opt.name": "adam"}, "tags": ["gpu"]}'
"""Every response example's timestamp unless its row gives one."""

ROW = re.compile(r"^\|\s*([^|`]+?)\s*\|\s*(?:`([^`]*)`)?\s*\|\s*`([0-9a-f ]+)`\s*\|\s*$")
HEX_CELL = re.compile(r"\|\s*`[0-9a-f]{2}(?: ?[0-9a-f]{2})*`\s*\|\s*$")
FIELD = re.compile(r"\s*([a-z_]+)=")
JSON_BLOCK = re.compile(r"^```json ([a-z_]+)\n(.*?)^```$", re.M | re.S)

OTHER_KINDS = (
    "rejected",
    "metrics.bin record",
    "meta.bin",
    "metrics payload",
    "uvarint",
    "key hash",
)
ENUMS: dict[str, Any] = {
    "code": ErrorCode,
    "level": LogLevel,
    "prune_type": PruneType,
    "status": JobStatus,
}
RESPONSES: dict[str, Any] = {
    "SUCCESS packet": Success,
    "ERROR packet": Error,
    "PROGRESS packet": Progress,
    "STATUS packet": StatusReport,
    "DATA packet": Data,
    "LOG packet": Log,
}


def parse_fields(text: str) -> dict[str, Any]:
    """`a=1 b="x" c=[1, 2]` -> {"a": 1, "b": "x", "c": [1, 2]}; enum names become enums."""
    decoder = json.JSONDecoder()
    out: dict[str, Any] = {}
    pos = 0
    while text[pos:].strip():
        match = FIELD.match(text, pos)
        assert match, f"bad field list at {text[pos:]!r}"
        value, pos = decoder.raw_decode(text, match.end())
        name = match.group(1)
        if name in ENUMS and isinstance(value, str):
            value = ENUMS[name][value]
        out[name] = value
    return out


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_vectors(text: str) -> list[tuple[str, dict[str, Any], bytes]]:
    vectors = []
    for line in text.splitlines():
        if not HEX_CELL.search(line):
            continue
        match = ROW.match(line)
        assert match, f"a hex example outside the row convention: {line}"
        kind, fields, hexa = match.groups()
        assert kind in Opcode.__members__ or kind in RESPONSES or kind in OTHER_KINDS, kind
        vectors.append((kind, parse_fields(fields or ""), bytes.fromhex(hexa)))
    return vectors


VECTORS = doc_vectors(doc_text())


def build_request(kind: str, fields: dict[str, Any]) -> Any:
    values = dict(fields)
    if "commit_id" in values:
        values["commit_id"] = bytes.fromhex(values["commit_id"])
    if "metrics" in values:
        values["metrics"] = tuple(MetricPoint(*point) for point in values["metrics"])
    if kind == "LOG_METRICS_AT":
        rows = values.pop("records")
        values["count"] = len(rows)
        values["records"] = b"".join(
            encode_record(ts, step, value, name.encode()) for ts, step, value, name in rows
        )
    return REQUEST_TYPES[Opcode[kind]](key_hash=KEY, **values)


def metrics_payload(fields: dict[str, Any]) -> bytes:
    records = b"".join(
        encode_record(ts, step, value, name.encode()) for ts, step, value, name in fields["records"]
    )
    return encode_metrics_payload(fields["next"], len(fields["records"]), records)


def build_response(kind: str, fields: dict[str, Any]) -> Response:
    values = {"timestamp": TIMESTAMP, **fields}
    if kind == "STATUS packet" and not isinstance(values["status_json"], str):
        values["status_json"] = dumps(values["status_json"])
    if kind == "DATA packet":
        payload = values["payload"]
        values["payload"] = (
            metrics_payload(payload)
            if values["data_type"] == "metrics"
            else dumps(payload).encode()
        )
    response: Response = RESPONSES[kind](**values)
    return response


def check(kind: str, fields: dict[str, Any], wire: bytes) -> None:
    """The row's bytes decode to its fields, and its fields encode to its bytes."""
    if kind == "rejected":
        with pytest.raises(MalformedRequest) as caught:
            decode_request(wire)
        assert caught.value.message == fields["message"]
    elif kind in Opcode.__members__:
        request = build_request(kind, fields)
        assert encode_request(request) == wire
        assert decode_request(wire) == request
        if kind in ("LOG_METRIC", "LOG_METRICS"):
            fast = record_tails(wire)
            assert fast is not None and fast[0] == KEY and fast[1] == request.commit_id
            assert fast[2] == request.tails()
        if kind == "LOG_METRICS_AT":
            at = records_at(wire)
            latest = max_timestamp(request.records)
            assert at == (KEY, request.commit_id, request.records, request.count, latest)
    elif kind in RESPONSES:
        response = build_response(kind, fields)
        assert encode_response(response) == wire
        assert decode_response(wire) == response
    elif kind == "metrics.bin record":
        record = MetricRecord(fields["timestamp"], fields["step"], fields["value"], fields["name"])
        assert encode_record(*record[:3], record.name.encode()) == wire
        assert decode_records(wire) == [record]
    elif kind == "meta.bin":
        meta = Metadata(**fields)
        assert encode_metadata(meta) == wire
        assert decode_metadata(wire) == meta
    elif kind == "metrics payload":
        assert metrics_payload(fields) == wire
        page = decode_metrics_payload(wire)
        assert page.next == fields["next"]
        assert [list(r) for r in page.records] == fields["records"]
    elif kind == "uvarint":
        assert encode_uvarint(fields["value"]) == wire
        assert decode_uvarint(wire, 0) == (fields["value"], len(wire))
    elif kind == "key hash":
        assert key_hash(fields["key"]) == wire
    else:
        raise AssertionError(f"unknown kind {kind}")


@pytest.mark.parametrize(
    ("kind", "fields", "wire"),
    [pytest.param(*v, id=f"{i}-{v[0]}") for i, v in enumerate(VECTORS)],
)
def test_doc_vector(kind: str, fields: dict[str, Any], wire: bytes) -> None:
    check(kind, fields, wire)


def test_doc_covers_every_opcode_and_packet_type() -> None:
    kinds = {kind for kind, _, _ in VECTORS}
    assert {op.name for op in Opcode} <= kinds
    assert {f"{t.name} packet" for t in PacketType} <= kinds
    assert set(OTHER_KINDS) <= kinds


def test_doc_states_the_example_key_and_its_hash() -> None:
    text = doc_text()
    assert EXAMPLE_KEY in text
    assert hashlib.sha256(EXAMPLE_KEY.encode()).hexdigest() in text
    assert KEY.hex() in text


def test_a_wrong_byte_in_the_doc_fails() -> None:
    """Every row is really checked: flipping a bit of any byte of its hex breaks it.
    (A refused request's message does not depend on every byte, so it is left out.)"""
    for kind, fields, wire in VECTORS:
        if kind == "rejected":
            continue
        for at in range(len(wire)):
            bad = bytearray(wire)
            bad[at] ^= 0x01
            with pytest.raises(Exception):  # noqa: B017 - any failure of the check
                check(kind, fields, bytes(bad))


def _keys(value: Any) -> Any:
    """The key structure of a JSON value: dict keys in order, lists by their first item."""
    if isinstance(value, dict):
        return [(k, _keys(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return None


def doc_json() -> dict[str, Any]:
    blocks = {name: json.loads(body) for name, body in JSON_BLOCK.findall(doc_text())}
    assert blocks, "no ```json <shape> blocks in the document"
    return blocks


async def test_doc_json_shapes_match_a_real_daemon(daemon: Any) -> None:
    commit = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")
    admin = hash_of("admin")
    c = await daemon.client()
    try:
        assert isinstance(
            await c.call(CreateExperiment(key_hash=admin, commit_id=commit, job_name="train")),
            Success,
        )
        log = LogMetrics(key_hash=admin, commit_id=commit, metrics=(MetricPoint(7, 0.25, "loss"),))
        assert isinstance(await c.call(log), Success)
        spec = '{"command":["python","train.py"]}'
        queued = QueueJobSpec(
            key_hash=admin, commit_id=commit, priority=9, job_name="train", spec=spec
        )
        assert isinstance(await c.call(queued), Data)  # claimed below: `job` has a spec
        await c.call(QueueJob(key_hash=admin, commit_id=commit, priority=5, job_name="train"))
        other = CreateExperiment(key_hash=admin, commit_id=b"\xff" * 20, job_name="")
        assert isinstance(await c.call(other), Success)
        got: dict[str, Any] = {}
        for name, request in (
            ("experiment", GetExperiment(key_hash=admin, commit_id=commit)),
            ("experiments", ListExperiments(key_hash=admin)),
            ("whoami", WhoAmI(key_hash=admin)),
            ("pruned", PrunePreview(key_hash=admin, prune_type=PruneType.KEEP_NEWEST, value=1)),
            ("job", ClaimJob(key_hash=admin, worker_id="gpu-01")),
            ("status", Status(key_hash=admin)),
            ("run", UpdateRun(key_hash=admin, commit_id=b"\xff" * 20, patch=RUN_PATCH)),
            ("runs", ListRuns(key_hash=admin, filter='{"id": "ff"}')),
        ):
            response = await c.call(request)
            if isinstance(response, StatusReport):
                got[name] = json.loads(response.status_json)
            else:
                assert isinstance(response, Data), response
                got[name] = json.loads(response.payload)
    finally:
        await c.ws.close()
    got["health"] = daemon.app.health()
    documented = doc_json()
    assert set(documented) == set(got)
    for name, value in got.items():
        assert name in documented, f"no ```json {name} example"
        assert _keys(documented[name]) == _keys(value), name


def test_no_file_refers_to_a_document_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    documents = {Path(f).name for f in files if f.endswith(".md")}
    outside = re.compile(r"\.\./shared|\bshared/\w+\.md")
    mention = re.compile(r"[\w.-]+\.md\b")
    bad = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in (".png", ".sqlite3"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        bad += [f"{name}: {m.group()}" for m in outside.finditer(text)]
        bad += [
            f"{name}: {m.group()}" for m in mention.finditer(text) if m.group() not in documents
        ]
    assert not bad
