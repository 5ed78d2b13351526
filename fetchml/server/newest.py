"""GET_EXPERIMENT's document: the newest records that fit, as JSON made straight from
their bytes (no object per record), newest first until the room is used, so that only
what is sent is formatted. The text is byte for byte what shapes.experiment gives.
"""

import json
from typing import Any

from fetchml.protocol import shapes
from fetchml.protocol.metrics import RECORD_HEAD, RECORD_MIN, walk

_METRICS = '"metrics":[]'


def _value(value: float) -> str:
    text = repr(value)  # what json.dumps writes for a finite float
    return text if "n" not in text else json.dumps(shapes.json_value(value))


def document(data: bytes, shape: dict[str, Any], total: int, start: int, budget: int) -> bytes:
    """The `experiment` JSON of `shape` (shapes.experiment without records) holding the
    records of `data` (whole records, the last of `total`, from index `start`): all of
    them when they fit in `budget` bytes and start is 0, else the newest that fit beside
    the rest with `metrics_truncated` true."""
    starts: list[int] = []
    walk(data, starts)
    head = shapes.dumps_utf8(shape | {"metrics_truncated": True})
    room = budget - len(head.encode())
    unpack = RECORD_HEAD.unpack_from
    names: dict[bytes, tuple[str, int]] = {}
    parts: list[str] = []
    for at in reversed(starts):
        timestamp, step, value, length = unpack(data, at)
        raw = data[at + RECORD_MIN : at + RECORD_MIN + length]
        named = names.get(raw)
        if named is None:
            text = shapes.dumps_utf8(raw.decode("utf-8", "replace"))
            named = names[raw] = (text, len(text.encode()) - len(text))
        item = (
            f'{{"name":{named[0]},"value":{_value(value)},"step":{step},"timestamp":{timestamp}}}'
        )
        size = len(item) + named[1] + 1
        if room < size:
            break
        room -= size
        parts.append(item)
    parts.reverse()
    truncated = len(parts) < total
    before, _, after = shapes.dumps_utf8(shape | {"metrics_truncated": truncated}).partition(
        _METRICS
    )
    # Keys are written in order and a string's quotes are escaped: the first '"metrics":[]'
    # is the key's.
    return f'{before}"metrics":[{",".join(parts)}]{after}'.encode()
