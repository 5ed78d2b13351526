"""QUERY_METRICS: filtered pages by record index, and LTTB downsampling per name."""

from functools import partial
from itertools import pairwise

import anyio
import numpy as np

from fetchml.protocol.metrics import RECORD_MIN, RECORD_STEP, encode_metrics_payload, walk
from fetchml.protocol.requests import QueryMetrics

from . import columns
from .errors import InvalidRequest
from .series import Series, SeriesCache, lttb
from .storage import ExperimentStore

DEFAULT_LIMIT = 100_000
"""Records per page when the request says 0; max_message_bytes usually binds first."""
PAGE_OVERHEAD = 64
"""Packet header, data type and length prefixes around a metrics payload."""
READ_BYTES = 1 << 20
ALL_STEPS = (0, 0xFFFFFFFF)


async def query_page(
    store: ExperimentStore, cache: SeriesCache, req: QueryMetrics, max_message_bytes: int
) -> bytes:
    """The DATA `metrics` payload for one QUERY_METRICS request."""
    commit = req.commit_hex
    limit = req.limit or DEFAULT_LIMIT
    budget = max_message_bytes - PAGE_OVERHEAD - 12
    if req.max_points or req.name:  # one name's columns, or the checkpoint's first and last
        work = (
            partial(columns.downsample, req=req, budget=budget)
            if req.max_points
            else partial(columns.page, req=req, budget=budget, limit=limit)
        )
        payload = await store.on_sidecars(commit, work)
        if payload is not None:
            return payload
    if req.max_points:  # no sidecars (they could not be written): the file itself
        return await downsample(cache, req, max_message_bytes)
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
        picked, index, full = await anyio.to_thread.run_sync(
            _filter, req, name, chunk.data, index, limit - count, budget - size
        )
        parts += picked
        size += sum(map(len, picked))
        count += len(picked)
    next_index = index if index < total else 0
    return encode_metrics_payload(next_index, count, b"".join(parts))


def _filter(
    req: QueryMetrics, name: bytes | None, data: bytes, index: int, room: int, budget: int
) -> tuple[list[bytes], int, bool]:
    """The matching records of a chunk starting at record `index`, up to `room` records
    and `budget` bytes: (records, index after the last one looked at, page full)."""
    out: list[bytes] = []
    starts: list[int] = []
    starts.append(walk(data, starts))
    step_from, step_to = req.step_from, req.step_to
    step_at = RECORD_STEP.unpack_from
    for start, end in pairwise(starts):
        (step,) = step_at(data, start)
        if step_from <= step <= step_to and (
            name is None or data[start + RECORD_MIN : end] == name
        ):
            if end - start > budget:
                return out, index, True
            out.append(data[start:end])
            budget -= end - start
        index += 1
        if len(out) == room:
            return out, index, True
    return out, index, False


def is_heavy(req: QueryMetrics) -> bool:
    """Downsampling, and filtered pages (they may scan the whole experiment)."""
    return bool(req.max_points or req.name or (req.step_from, req.step_to) != ALL_STEPS)


async def downsample(cache: SeriesCache, req: QueryMetrics, max_message_bytes: int) -> bytes:
    """Per name, min(n, max_points) points chosen by LTTB; names in order of first appearance."""
    async with cache.columns(req.commit_hex) as columns:
        return await anyio.to_thread.run_sync(_downsample, columns, req, max_message_bytes)


def _downsample(columns: dict[bytes, Series], req: QueryMetrics, max_message_bytes: int) -> bytes:
    names = [req.name.encode()] if req.name else list(columns)
    budget = max_message_bytes - PAGE_OVERHEAD - 12
    parts: list[bytes] = []
    size = 0
    for name in names:
        series = columns.get(name)
        if series is None:
            continue
        steps, values = series.steps, series.values
        picked = None
        if (req.step_from, req.step_to) != ALL_STEPS:
            picked = np.flatnonzero((steps >= req.step_from) & (steps <= req.step_to))
            steps, values = steps[picked], values[picked]
        for k in lttb(steps, values, req.max_points):
            record = series.record(k if picked is None else int(picked[k]), name)
            size += len(record)
            if size > budget:
                raise InvalidRequest("too many points: lower max_points or filter by name")
            parts.append(record)
    return encode_metrics_payload(0, len(parts), b"".join(parts))
