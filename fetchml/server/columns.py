"""QUERY_METRICS of one name (or every name's first and last points) answered from the
sidecars (sidecar.py): they read the names' columns, never metrics.bin, and hold one
name's step and value columns at most (12 bytes a point) while downsampling.

Plain synchronous functions for a worker thread; the caller holds the experiment's
sidecar lock and has brought the sidecars up to the valid prefix of `total` records.
"""

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fetchml.protocol.metrics import RECORD_MIN, encode_metrics_payload, encode_record
from fetchml.protocol.requests import QueryMetrics

from . import sidecar
from .errors import InvalidRequest
from .series import lttb_windows, release_free_memory
from .sidecar import ROW, Checkpoint, NameInfo, Record

ALL_STEPS = (0, 0xFFFFFFFF)
WINDOW_ROWS = 1 << 18
"""Rows looked at a time while paging (7 MiB)."""
MIN_READ_ROWS = 1 << 14
"""Rows read at least at a time while filling a page."""
TOO_MANY = "too many points: lower max_points or filter by name"


def _encode(r: Record, name: bytes) -> bytes:
    return encode_record(r.ts, r.step, r.value, name)


def _row_record(r: np.void, name: bytes) -> bytes:
    return encode_record(int(r["ts"]), int(r["step"]), float(r["value"]), name)


def _named(cp: Checkpoint, name: str) -> list[tuple[int, NameInfo]]:
    """The columns a request reads: its name's, or every name's, in order of first appearance."""
    if not name:
        return list(enumerate(cp.names))
    wanted = name.encode()
    return [(k, info) for k, info in enumerate(cp.names) if info.name == wanted]


def ends(cp: Checkpoint, req: QueryMetrics, budget: int) -> bytes:
    """max_points 1 or 2 over every step: each name's first (and last) record, from the
    checkpoint alone."""
    parts: list[bytes] = []
    for _, info in _named(cp, req.name):
        picks = [info.first] if req.max_points == 1 or info.rows == 1 else [info.first, info.last]
        parts += [_encode(r, info.name) for r in picks]
    data = b"".join(parts)
    if len(data) > budget:
        raise InvalidRequest(TOO_MANY)
    return encode_metrics_payload(0, len(parts), data)


class Column:
    """The first `rows` rows of a name's column, read in pieces (a copy each)."""

    def __init__(self, directory: Path, k: int, rows: int) -> None:
        self.rows = rows
        self.fd = os.open(sidecar.column_path(directory, k), os.O_RDONLY | os.O_CLOEXEC)

    def __enter__(self) -> "Column":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read(self, lo: int, hi: int) -> npt.NDArray[np.void]:
        hi = min(hi, self.rows)
        data = os.pread(self.fd, (hi - lo) * ROW.itemsize, lo * ROW.itemsize)
        if len(data) != (hi - lo) * ROW.itemsize:
            raise sidecar.Unusable("column shorter than its checkpoint")
        return np.frombuffer(data, ROW)

    def find(self, index: int) -> int:
        """The first row of a record index >= `index` (binary search, a read a step)."""
        lo, hi = 0, self.rows
        while lo < hi:
            mid = (lo + hi) // 2
            if int(self.read(mid, mid + 1)["index"][0]) < index:
                lo = mid + 1
            else:
                hi = mid
        return lo


def check(directory: Path, cp: Checkpoint, checked: set[int], k: int) -> None:
    """The column's rows match the checkpoint (once per process and column): Unusable."""
    if k not in checked:
        sidecar.check_rows(directory, k, cp.names[k])
        checked.add(k)


def downsample(
    directory: Path, cp: Checkpoint, checked: set[int], req: QueryMetrics, budget: int
) -> bytes:
    """Per name, min(n, max_points) of its n points in the step range, by LTTB."""
    if (req.step_from, req.step_to) == ALL_STEPS and req.max_points <= 2:
        return ends(cp, req, budget)
    parts: list[bytes] = []
    size = 0
    for k, info in _named(cp, req.name):
        check(directory, cp, checked, k)
        for record in _downsample_one(directory, k, info, req):
            size += len(record)
            if size > budget:
                raise InvalidRequest(TOO_MANY)
            parts.append(record)
    return encode_metrics_payload(0, len(parts), b"".join(parts))


def _downsample_one(directory: Path, k: int, info: NameInfo, req: QueryMetrics) -> list[bytes]:
    """LTTB over the name's points in the step range, read a window at a time."""
    with Column(directory, k, info.rows) as column:
        picked = None  # the rows in the step range, when it is not every step
        if (req.step_from, req.step_to) != ALL_STEPS:
            parts = []
            for lo in range(0, info.rows, WINDOW_ROWS):
                step = column.read(lo, lo + WINDOW_ROWS)["step"]
                parts.append(lo + np.flatnonzero((step >= req.step_from) & (step <= req.step_to)))
            picked = np.concatenate(parts) if parts else np.empty(0, np.int64)

        def load(lo: int, hi: int) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float64]]:
            if picked is None:
                rows = column.read(lo, hi)
                return rows["step"], rows["value"]
            at = picked[lo:hi]
            steps, values = [], []
            for start in range(int(at[0]), int(at[-1]) + 1, WINDOW_ROWS):  # sparse: in pieces
                rows = column.read(start, start + WINDOW_ROWS)
                these = at[np.searchsorted(at, start) : np.searchsorted(at, start + WINDOW_ROWS)]
                these = these - start
                steps.append(rows["step"][these])
                values.append(rows["value"][these])
            return np.concatenate(steps), np.concatenate(values)

        n = info.rows if picked is None else len(picked)
        chosen = lttb_windows(n, req.max_points, load)
        at = chosen if picked is None else picked[chosen].tolist()
        out = [_row_record(column.read(i, i + 1)[0], info.name) for i in at]
    release_free_memory()
    return out


def page(
    directory: Path,
    cp: Checkpoint,
    checked: set[int],
    req: QueryMetrics,
    budget: int,
    limit: int,
) -> bytes:
    """Records of one name in the step range from record `after`: what the scan of the file
    would give (query.query_page), with `next` the record after the last one looked at.
    One name's records are all one size, so a page holds min(limit, budget // size)."""
    total = cp.count
    found = _named(cp, req.name)
    parts: list[bytes] = []
    count = next_index = 0
    if found:
        k, info = found[0]
        check(directory, cp, checked, k)
        room = min(limit, budget // (RECORD_MIN + len(info.name)))
        with Column(directory, k, info.rows) as column:
            at = column.find(req.after)
            while at < info.rows and next_index == 0:
                # the rows a page still needs (and one after), not a whole window each page
                rows = WINDOW_ROWS if count == room else room - count + 1
                window = column.read(at, at + min(WINDOW_ROWS, max(rows, MIN_READ_ROWS)))
                step = window["step"]
                hits = window[(step >= req.step_from) & (step <= req.step_to)]
                if count == room:  # full by bytes: continue from the next matching record
                    next_index = int(hits["index"][0]) if len(hits) else 0
                    at += len(window)
                    continue
                taken = hits[: room - count]
                parts.append(_records(taken, info.name))
                count += len(taken)
                if count == room and room == limit:
                    next_index = int(taken["index"][-1]) + 1
                elif count == room and len(hits) > len(taken):
                    next_index = int(hits["index"][len(taken)])
                at += len(window)
    if next_index >= total:
        next_index = 0
    return encode_metrics_payload(next_index, count, b"".join(parts))


def _records(rows: npt.NDArray[np.void], name: bytes) -> bytes:
    """The metrics.bin records of a name's column rows, encoded at once."""
    out = np.empty(len(rows), record_dtype(name))
    out["timestamp"] = rows["ts"]
    out["step"] = rows["step"]
    out["value"] = rows["value"]
    out["length"] = len(name)
    out["name"] = np.void(name)
    return out.tobytes()


def record_dtype(name: bytes) -> np.dtype[np.void]:
    """A record named `name` as metrics.bin holds it: big-endian, no padding."""
    return np.dtype(
        [
            ("timestamp", ">u8"),
            ("step", ">u4"),
            ("value", ">f8"),
            ("length", "u1"),
            ("name", f"V{len(name)}"),
        ]
    )
