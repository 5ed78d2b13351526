"""The dashboard's JavaScript codec and SHA-256, run in the browser against the same golden
bytes as the Python codec (copied here, like tests/protocol/test_protocol_vectors.py)."""

import hashlib
from typing import Any

from tests.support.browser import Page

KEY = "5ba7dccf22514f45ae84bfb8b12cd02e"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
JOB_ID = "6f1c0e2a-8d53-4a8e-9b0e-3c1f5a7d2b10"

# (encoder, fields, golden hex): every opcode of revisions 1-4 the codec encodes.
REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "queueJob",
        {"commit": COMMIT, "priority": 5, "jobName": "train"},
        f"01 {KEY} {COMMIT} 05 05 747261696e",
    ),
    ("status", {}, f"02 {KEY}"),
    ("cancelJob", {"jobName": "train"}, f"03 {KEY} 05 747261696e"),
    ("prune", {"pruneType": 0, "value": 10}, f"04 {KEY} 00 0000000a"),
    ("prune", {"pruneType": 1, "value": 30}, f"04 {KEY} 01 0000001e"),
    (
        "logMetric",
        {"commit": COMMIT, "step": 7, "value": 0.25, "name": "loss"},
        f"0a {KEY} {COMMIT} 00000007 3fd0000000000000 04 6c6f7373",
    ),
    ("getExperiment", {"commit": COMMIT}, f"0b {KEY} {COMMIT}"),
    (
        "logMetrics",
        {
            "commit": COMMIT,
            "points": [
                {"step": 1, "value": 0.5, "name": "loss"},
                {"step": 1, "value": 0.9, "name": "acc"},
            ],
        },
        f"0c {KEY} {COMMIT} 0002 00000001 3fe0000000000000 04 6c6f7373"
        " 00000001 3feccccccccccccd 03 616363",
    ),
    (
        "createExperiment",
        {"commit": COMMIT, "jobName": "train"},
        f"0d {KEY} {COMMIT} 05 747261696e",
    ),
    ("listExperiments", {}, f"0e {KEY}"),
    (
        "queryMetrics",
        {"commit": COMMIT, "name": "loss", "limit": 1000},
        f"0f {KEY} {COMMIT} 04 6c6f7373 00000000 ffffffff 00000000 0000000000000000 000003e8",
    ),
    (
        "watchMetrics",
        {"commit": COMMIT, "fromIndex": 100},
        f"10 {KEY} {COMMIT} 0000000000000064 00",
    ),
    ("claimJob", {"workerId": "gpu-01"}, f"11 {KEY} 06 6770752d3031"),
    (
        "updateJob",
        {"jobId": JOB_ID, "status": 2},
        f"12 {KEY} 24"
        " 36663163306532612d386435332d346138652d396230652d336331663561376432623130 02 0000",
    ),
    ("whoami", {}, f"13 {KEY}"),
    (
        "updateRun",
        {"commit": COMMIT, "patch": '{"status":"running","params":{"lr":0.1}}'},
        f"14 {KEY} {COMMIT} 0028"
        " 7b22737461747573223a2272756e6e696e67222c22706172616d73223a7b226c72223a302e317d7d",
    ),
    (
        "logMetricsAt",
        {
            "commit": COMMIT,
            "records": [
                {"timestamp": 1795735109, "step": 0, "value": 1.0, "name": "loss"},
                {"timestamp": 1795735110, "step": 1, "value": 0.5, "name": "loss"},
            ],
        },
        f"15 {KEY} {COMMIT} 0002 000000006b08be45 00000000 3ff0000000000000 046c6f7373"
        " 000000006b08be46 00000001 3fe0000000000000 046c6f7373",
    ),
    ("listRuns", {}, f"17 {KEY} 0000"),
    (
        "listRuns",
        {"filter": '{"status":"running","limit":10}'},
        f"17 {KEY} 001f 7b22737461747573223a2272756e6e696e67222c226c696d6974223a31307d",
    ),
    ("prunePreview", {"pruneType": 0, "value": 10}, f"18 {KEY} 00 0000000a"),
]

TS = 1764000000
RESPONSES: list[tuple[str, dict[str, Any]]] = [
    ("00 0000000069248100 00", {"type": "success", "timestamp": TS, "message": ""}),
    ("00 0000000069248100 01 32", {"type": "success", "timestamp": TS, "message": "2"}),
    (
        "01 0000000069248100 02 0f 496e76616c696420415049206b6579 00",
        {
            "type": "error",
            "timestamp": TS,
            "code": 2,
            "codeName": "AUTHENTICATION_FAILED",
            "message": "Invalid API key",
            "details": "",
        },
    ),
    (
        "01 0000000069248100 01 17 756e737570706f72746564206f70636f64652030783036 00",
        {
            "type": "error",
            "timestamp": TS,
            "code": 1,
            "codeName": "INVALID_REQUEST",
            "message": "unsupported opcode 0x06",
            "details": "",
        },
    ),
    (
        "02 0000000069248100 01 00000003 0000000a 07 7072756e696e67",
        {
            "type": "progress",
            "timestamp": TS,
            "progressType": 1,
            "value": 3,
            "total": 10,
            "message": "pruning",
        },
    ),
    ("03 0000000069248100 02 7b7d", {"type": "status", "timestamp": TS, "statusJson": "{}"}),
    (
        "04 0000000069248100 06 77686f616d69 10 7b2275736572223a22616c696365227d",
        {
            "type": "data",
            "timestamp": TS,
            "dataType": "whoami",
            "payload": b'{"user":"alice"}'.hex(),
        },
    ),
    (
        "05 0000000069248100 02 0d 6469736b203931252066756c6c",
        {"type": "log", "timestamp": TS, "level": 2, "message": "disk 91% full"},
    ),
]
METRICS_PAYLOAD = "0000000000000000 00000001 000000006b08be45 00000007 3fd0000000000000 04 6c6f7373"
BAD_PACKETS = [
    "00 00000000692481",  # shorter than the header
    "00 0000000069248100 05 6162",  # string past the end
    "00 0000000069248100 00 00",  # trailing byte
    "09 0000000069248100 00",  # unknown packet type
    "00 0000000069248100 02 c328",  # invalid UTF-8
]

RUN_IN_PAGE = """
const [vectors, done] = [arguments[0], arguments[arguments.length - 1]];
const unhex = (s) => Uint8Array.from(s.replace(/ /g, "").match(/../g) || [], (b) => parseInt(b, 16));
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
Promise.all([import("/static/codec.js"), import("/static/sha256.js")]).then(([c, s]) => {
  const out = {requests: [], responses: [], bad: [], uvarints: [], sha: []};
  const key = c.hexToBytes(vectors.key);
  for (const [encoder, fields] of vectors.requests) out.requests.push(hex(c.encode[encoder](key, fields)));
  for (const wire of vectors.responses) {
    const r = c.decodeResponse(unhex(wire));
    if (r.payload) r.payload = hex(r.payload);
    out.responses.push(r);
  }
  for (const wire of vectors.bad) {
    try { c.decodeResponse(unhex(wire)); out.bad.push("accepted"); }
    catch (e) { out.bad.push(e instanceof c.CodecError ? "CodecError" : String(e)); }
  }
  for (const [value, wire] of vectors.uvarints) {
    out.uvarints.push([hex(c.encodeUvarint(value)), c.decodeUvarint(unhex(wire), 0)]);
  }
  out.metrics = c.decodeRecords(unhex(vectors.metrics));
  const cols = c.decodeMetrics(unhex(vectors.metrics));
  out.columns = [cols.next, cols.count, [...cols.names].map(([n, v]) => [n, v.t, v.step, v.value])];
  for (const text of vectors.texts) out.sha.push(hex(s.sha256(text)));
  out.million = hex(s.sha256(new Uint8Array(1000000).fill(0x61)));
  out.keyHash = hex(s.keyHash("fml_example_key_do_not_use"));
  done(out);
}).catch((e) => done({error: String(e && e.stack || e)}));
"""
UVARINTS = [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (200, "c801"), (300, "ac02")]
TEXTS = [
    "",
    "abc",
    "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
    *("x" * n for n in (55, 56, 63, 64, 65, 119, 120, 1000)),
    "héllo ✓ 😀",
]


def test_codec_and_sha256_in_the_browser_match_the_golden_vectors(page: Page) -> None:
    page.driver.get(page.base + "/")
    vectors = {
        "key": KEY,
        "requests": [[encoder, fields] for encoder, fields, _ in REQUESTS],
        "responses": [wire for wire, _ in RESPONSES],
        "bad": BAD_PACKETS,
        "uvarints": UVARINTS,
        "metrics": METRICS_PAYLOAD,
        "texts": TEXTS,
    }
    out = page.driver.execute_async_script(RUN_IN_PAGE, vectors)
    assert "error" not in out, out.get("error")
    for (encoder, _, wire), got in zip(REQUESTS, out["requests"], strict=True):
        assert got == wire.replace(" ", ""), encoder
    assert out["responses"] == [expected for _, expected in RESPONSES]
    assert out["bad"] == ["CodecError"] * len(BAD_PACKETS)
    assert out["uvarints"] == [[wire, [value, len(wire) // 2]] for value, wire in UVARINTS]
    record = {"timestamp": 1795735109, "step": 7, "value": 0.25, "name": "loss"}
    assert out["metrics"] == {"next": 0, "records": [record]}
    assert out["columns"] == [0, 1, [["loss", [1795735109], [7], [0.25]]]]
    assert out["sha"] == [hashlib.sha256(t.encode()).hexdigest() for t in TEXTS]
    assert out["sha"][1] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert out["million"] == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    assert out["keyHash"] == KEY
