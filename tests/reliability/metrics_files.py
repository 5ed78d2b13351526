"""Large metrics.bin files for the reliability tests, written in one go with numpy.

Every name has the same length, so every record has one layout; the first
records are checked against the protocol's own record encoder.
"""

from pathlib import Path

import numpy as np

from fetchml.protocol.metrics import encode_record

from .support import STAMP, make_experiment, meta_bytes


def big_metrics(records: int, names: tuple[bytes, ...] = (b"loss", b"grad")) -> bytes:
    """`records` records cycling through `names`: step i, value sin(i / 1000)."""
    (length,) = {len(name) for name in names}
    layout = np.dtype(
        [("ts", ">u8"), ("step", ">u4"), ("value", ">f8"), ("len", "u1"), ("name", f"S{length}")]
    )
    steps = np.arange(records)
    table = np.zeros(records, layout)
    table["ts"] = STAMP
    table["step"] = steps
    table["value"] = np.sin(steps / 1000)
    table["len"] = length
    table["name"] = np.array(names)[steps % len(names)]
    data = table.tobytes()
    head = b"".join(
        encode_record(STAMP, i, float(np.sin(i / 1000)), names[i % len(names)])
        for i in range(min(records, 10))
    )
    assert data.startswith(head)
    return data


def big_experiment(base: Path, commit: str, records: int, user: str) -> Path:
    return make_experiment(base, commit, big_metrics(records), meta_bytes(commit, user=user))
