"""GET_EXPERIMENT's document made from record bytes is the one the shapes give."""

import math
import random
from typing import Any

import pytest

from fetchml.protocol import shapes
from fetchml.protocol.metrics import MetricRecord, decode_records, encode_record
from fetchml.server import newest

NAMES = [b"loss", "d\u00e9bit \u2603".encode(), b'q"uo\\te', b"x" * 255]
VALUES = [0.1, -2.5e-300, 1e22, 3.0, math.nan, math.inf, -math.inf, 123456789.125]


def reference(data: bytes, meta: dict[str, Any], total: int, start: int, budget: int) -> bytes:
    """The documented rule, through the shapes: every record when the document fits and
    starts at record 0, else the newest that fit with metrics_truncated true."""

    def doc(records: list[MetricRecord], truncated: bool) -> bytes:
        return shapes.dumps_utf8(
            shapes.experiment(
                **meta, metrics=records, metrics_count=total, metrics_truncated=truncated
            )
        ).encode()

    records = decode_records(data)
    text = doc(records, False)
    if len(text) <= budget and start == 0:
        return text
    room = budget - len(doc([], True))
    keep = 0
    for record in reversed(records):
        size = len(shapes.dumps_utf8(shapes.metric(record)).encode()) + 1
        if room < size:
            break
        room -= size
        keep += 1
    return doc(records[len(records) - keep :], keep < total)


@pytest.mark.parametrize("seed", range(4))
def test_document_is_the_shapes_one(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.randrange(0, 40)
    data = b"".join(
        encode_record(
            rng.randrange(946684800, 4294967295),
            rng.randrange(0, 1 << 32),
            rng.choice(VALUES) * rng.random(),
            rng.choice(NAMES),
        )
        for _ in range(count)
    )
    run = None if seed % 2 else {"status": "running", "name": "r\u00e9", "tags": ["a"]}
    meta: dict[str, Any] = {
        "commit_id": "ab" * 20,
        "timestamp": 1764000000,
        "job_name": 'job "metrics":[]',
        "user": "\u00fcser",
        "run": run,
    }
    for start in (0, 3):
        total = count + start
        for budget in range(0, 9000, 89):
            shape = shapes.experiment(
                **meta, metrics=(), metrics_count=total, metrics_truncated=False
            )
            got = newest.document(data, shape, total, start, budget)
            assert got == reference(data, meta, total, start, budget), (start, budget)
