"""QUERY_METRICS: filtered pages by record index, and LTTB downsampling per name."""

import struct
from collections.abc import Sequence

from protocol.records import RECORD_HEAD, RECORD_MIN
from protocol.requests import QueryMetrics
from protocol.responses import encode_metrics_payload

from .errors import InvalidRequest
from .storage import ExperimentStore

DEFAULT_LIMIT = 100_000
"""Records per page when the request says 0; max_message_bytes usually binds first."""
PAGE_OVERHEAD = 64
"""Packet header, data type and length prefixes around a metrics payload."""
READ_BYTES = 1 << 20
ALL_STEPS = (0, 0xFFFFFFFF)


def _select(
    data: bytes, name: bytes | None, step_from: int, step_to: int
) -> list[tuple[int, int, int]]:
    """(start, end, step) of the records in `data` that match."""
    return [
        (start, end, step)
        for start, end, step in _walk(data)
        if step_from <= step <= step_to and (name is None or data[start + RECORD_MIN : end] == name)
    ]


def _walk(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, step) of every record in a buffer of whole records."""
    out = []
    pos = 0
    size = len(data)
    unpack = _STEP_LEN.unpack_from
    while pos < size:
        step, length = unpack(data, pos)
        end = pos + RECORD_MIN + length
        out.append((pos, end, step))
        pos = end
    return out


_STEP_LEN = struct.Struct(">8xI8xB")


async def query_page(store: ExperimentStore, req: QueryMetrics, max_message_bytes: int) -> bytes:
    """The DATA `metrics` payload for one QUERY_METRICS request."""
    if req.max_points:
        return await downsample(store, req, max_message_bytes)
    commit = req.commit_hex
    limit = req.limit or DEFAULT_LIMIT
    budget = max_message_bytes - PAGE_OVERHEAD - 12
    name = req.name.encode() if req.name else None
    plain = name is None and (req.step_from, req.step_to) == ALL_STEPS
    parts: list[bytes] = []
    size = count = 0
    index = req.after
    total = await store.count(commit)
    full = False
    while index < total and not full:
        if plain:  # whole records straight from the file, up to the limit and the budget
            if budget - size < RECORD_MIN + 255 and count:
                break
            chunk = await store.read(commit, index, budget - size, limit - count)
            if size + len(chunk.data) > budget:
                break  # a single record larger than what is left
            parts.append(chunk.data)
            size, count, index = (
                size + len(chunk.data),
                count + chunk.records,
                index + chunk.records,
            )
            full = count == limit
            continue
        chunk = await store.read(commit, index, READ_BYTES)
        data = chunk.data
        for start, end, step in _walk(data):
            if step_ok(req, step) and (name is None or data[start + RECORD_MIN : end] == name):
                if size + end - start > budget:
                    full = True
                    break
                parts.append(data[start:end])
                size += end - start
                count += 1
            index += 1
            if count == limit:
                full = True
                break
    next_index = index if index < total else 0
    return encode_metrics_payload(next_index, count, b"".join(parts))


def step_ok(req: QueryMetrics, step: int) -> bool:
    return req.step_from <= step <= req.step_to


async def downsample(store: ExperimentStore, req: QueryMetrics, max_message_bytes: int) -> bytes:
    """Per name, min(n, max_points) points chosen by LTTB; names in order of first appearance."""
    commit = req.commit_hex
    name = req.name.encode() if req.name else None
    series: dict[bytes, list[tuple[int, int, float]]] = {}
    chunks: list[bytes] = []
    index = 0
    total = await store.count(commit)
    while index < total:
        chunk = await store.read(commit, index, READ_BYTES)
        base = len(chunks)
        chunks.append(chunk.data)
        data = chunk.data
        for start, end, step in _select(data, name, req.step_from, req.step_to):
            key = data[start + RECORD_MIN : end]
            value = RECORD_HEAD.unpack_from(data, start)[2]
            series.setdefault(key, []).append((base << 40 | start, step, value))
        index += chunk.records
    parts: list[bytes] = []
    size = count = 0
    budget = max_message_bytes - PAGE_OVERHEAD - 12
    for points in series.values():
        for i in lttb([(step, value) for _, step, value in points], req.max_points):
            ref = points[i][0]
            data = chunks[ref >> 40]
            start = ref & ((1 << 40) - 1)
            record = data[start : start + RECORD_MIN + data[start + RECORD_MIN - 1]]
            size += len(record)
            if size > budget:
                raise InvalidRequest("too many points: lower max_points or filter by name")
            parts.append(record)
            count += 1
    return encode_metrics_payload(0, count, b"".join(parts))


def lttb(points: Sequence[tuple[int, float]], threshold: int) -> list[int]:
    """Largest-Triangle-Three-Buckets: indices of `threshold` points, first and last kept."""
    n = len(points)
    if threshold >= n:
        return list(range(n))
    if threshold == 1:
        return [0]
    if threshold == 2:
        return [0, n - 1]
    xs = [float(p[0]) for p in points]
    ys = [p[1] for p in points]
    every = (n - 2) / (threshold - 2)
    chosen = [0]
    a = 0
    for i in range(threshold - 2):
        start = int(i * every) + 1
        stop = int((i + 1) * every) + 1
        next_start, next_stop = stop, min(int((i + 2) * every) + 1, n)
        if i == threshold - 3:
            next_start, next_stop = n - 1, n
        span = next_stop - next_start
        avg_x = sum(xs[next_start:next_stop]) / span
        avg_y = sum(ys[next_start:next_stop]) / span
        ax, ay = xs[a], ys[a]
        best = start
        best_area = -1.0
        dx, dy = ax - avg_x, avg_y - ay
        for j in range(start, stop):
            area = abs(dx * (ys[j] - ay) + dy * (xs[j] - ax))
            if area > best_area:
                best_area, best = area, j
        chosen.append(best)
        a = best
    chosen.append(n - 1)
    return chosen
