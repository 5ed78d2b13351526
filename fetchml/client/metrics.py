"""The metric half of the Client API: logging, paged queries, latest values, watch."""

import asyncio
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace

from fetchml.protocol import requests as rq
from fetchml.protocol import rules
from fetchml.protocol.enums import Opcode
from fetchml.protocol.errors import MalformedRequest, MalformedResponse
from fetchml.protocol.metrics import POINT, acked_records, decode_metrics_payload
from fetchml.protocol.requests import MetricPoint

from .columns import Columns, Records, decode_page
from .errors import InvalidRequest, ProtocolViolation
from .models import MAX_STEP, Metric, MetricsPage, parse_commit
from .pipeline import Pipeline, encode
from .watch import MetricWatch, WatchOptions

QUERY_PAGE_SIZE = 100_000


class MetricsAPI(Pipeline):
    """LOG_METRIC, LOG_METRICS, QUERY_METRICS and WATCH_METRICS as typed methods."""

    async def log_metric(self, commit: str | bytes, name: str, value: float, step: int = 0) -> None:
        """One LOG_METRIC, awaited: its bytes are packed at once (the bytes
        `encode_request(LogMetric(...))` makes), with the same checks."""
        await self._success(log_metric_request(self._key, commit, name, value, step))

    async def log_metrics(
        self, commit: str | bytes, metrics: Iterable[tuple[str, float, int]]
    ) -> int:
        """Log (name, value, step) triples; split into as many LOG_METRICS as needed, pipelined.

        Returns the number of records the server acknowledged.
        """
        requests = log_metrics_requests(self._key, commit, metrics, self._max_message_bytes)
        results = await asyncio.gather(
            *(self._acked(message, count) for message, count in requests), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(r for r in results if isinstance(r, int))

    async def log_points(self, commit: str | bytes, points: Sequence[MetricPoint]) -> int:
        """One LOG_METRICS request of protocol MetricPoints (step, value, name): 1..65535 of them."""
        message = _log_points_request(self._key, parse_commit(commit), points)
        return await self._acked(message, len(points))

    async def _acked(self, message: bytes, count: int) -> int:
        return acked_records(await self._success(message), count)

    async def log_encoded(self, commit: bytes, count: int, body: bytes) -> int:
        """One LOG_METRICS whose `count` points are already wire-encoded (MetricLogger's path).

        `body` is the concatenation of `POINT.pack(step, value, len(name)) + name`
        per point, exactly as LogMetrics.encode_body writes them.
        """
        try:
            message = rq.encode_log_metrics(self._key, commit, count, body)
        except MalformedRequest as exc:
            raise InvalidRequest(exc.message) from None
        return acked_records(await self._success(message), count)

    async def query_page(
        self,
        commit: str | bytes,
        *,
        name: str = "",
        step_from: int = 0,
        step_to: int = MAX_STEP,
        max_points: int = 0,
        after: int = 0,
        limit: int = 0,
    ) -> MetricsPage:
        """One QUERY_METRICS request (see PROTOCOL.md); `next` 0 means the end of the file."""
        request = rq.QueryMetrics(
            key_hash=self._key,
            commit_id=parse_commit(commit),
            name=name,
            step_from=_check_step(step_from),
            step_to=_check_step(step_to),
            max_points=max_points,
            after=after,
            limit=limit,
        )
        payload = await self._data(request, "metrics")
        try:
            page = decode_metrics_payload(payload)
        except MalformedResponse as exc:
            raise ProtocolViolation(exc.message) from None
        return MetricsPage(next=page.next, records=tuple(page.records))

    async def query_pages(
        self,
        commit: str | bytes,
        *,
        name: str = "",
        step_from: int = 0,
        step_to: int = MAX_STEP,
        after: int = 0,
        page_size: int = QUERY_PAGE_SIZE,
    ) -> AsyncIterator[MetricsPage]:
        """Every matching record, page by page, following `next` until the end of the file."""
        commit_id = parse_commit(commit)
        while True:
            page = await self.query_page(
                commit_id,
                name=name,
                step_from=step_from,
                step_to=step_to,
                after=after,
                limit=page_size,
            )
            if page.records:
                yield page
            if page.next == 0:
                return
            if page.next <= after:
                raise ProtocolViolation(f"query page did not advance past record {after}")
            after = page.next

    async def query(
        self,
        commit: str | bytes,
        *,
        name: str = "",
        step_from: int = 0,
        step_to: int = MAX_STEP,
        max_points: int = 0,
    ) -> list[Metric]:
        """All matching records (all pages), or per name `max_points` chosen by LTTB."""
        if max_points:
            page = await self.query_page(
                commit, name=name, step_from=step_from, step_to=step_to, max_points=max_points
            )
            return list(page.records)
        out: list[Metric] = []
        async for page in self.query_pages(commit, name=name, step_from=step_from, step_to=step_to):
            out.extend(page.records)
        return out

    async def query_columns(
        self,
        commit: str | bytes,
        name: str,
        *,
        start_step: int | None = None,
        end_step: int | None = None,
        max_points: int | None = None,
    ) -> Columns:
        """Every point of the metric `name` (steps `start_step`..`end_step`, inclusive) as
        numpy columns; with `max_points`, at most that many chosen by LTTB."""
        pages = [
            records
            async for _, records in self._record_pages(
                commit, name, start_step, end_step, max_points
            )
        ]
        return Columns.of(pages)

    async def query_column_pages(
        self,
        commit: str | bytes,
        name: str,
        *,
        start_step: int | None = None,
        end_step: int | None = None,
    ) -> AsyncIterator[tuple[int, Columns]]:
        """query_columns a page at a time: (next, columns) per page, following `next` as
        query_pages does."""
        async for next_index, records in self._record_pages(commit, name, start_step, end_step):
            yield next_index, Columns.of([records])

    async def _record_pages(
        self,
        commit: str | bytes,
        name: str,
        start_step: int | None,
        end_step: int | None,
        max_points: int | None = None,
    ) -> AsyncIterator[tuple[int, Records]]:
        """(next, records) of each page of one name's records, decoded in place."""
        query = ColumnQuery.of(self._key, commit, name, start_step, end_step, max_points)
        while query.request is not None:
            page = query.take(await self._data(query.request, "metrics"))
            if page is not None:
                yield page

    async def latest(self, commit: str | bytes, name: str = "") -> dict[str, Metric]:
        """The last record logged under each name (one request: LTTB keeps first and last)."""
        page = await self.query_page(commit, name=name, max_points=2)
        return {record.name: record for record in page.records}

    def watch(
        self,
        commit: str | bytes,
        from_index: int = 0,
        name: str = "",
        *,
        options: WatchOptions | None = None,
    ) -> MetricWatch:
        """Stream metric batches on a new connection that reconnects and resumes (see MetricWatch)."""
        watch = MetricWatch(
            self._settings,
            parse_commit(commit),
            from_index,
            name,
            options=options or WatchOptions(open_timeout=self._open_timeout),
            on_event=self._on_event,
            on_close=self._watches.discard,
        )
        self._watches.add(watch)
        return watch


def _check_step(step: int) -> int:
    try:
        return rules.check_step(step)
    except MalformedRequest as exc:
        raise InvalidRequest(exc.message) from None


def _check_name(name: str) -> str:
    _name_bytes(name)
    return name


def _name_bytes(name: str) -> bytes:
    try:
        return rules.check_metric_name(name)
    except MalformedRequest as exc:
        raise InvalidRequest(exc.message) from None


_LOG_METRIC = struct.Struct(">B16s20sIdB")
"""A LOG_METRIC up to its name: opcode, key hash, commit, step, value, name length."""


def log_metric_request(
    key: bytes, commit: str | bytes, name: str, value: float, step: int = 0
) -> bytes:
    """A LOG_METRIC's bytes, packed at once (those `encode_request(LogMetric(...))` makes),
    with the same checks: a bad commit, name or step raises InvalidRequest."""
    commit_id = parse_commit(commit)
    step = _check_step(step)
    raw = _name_bytes(name)
    return _LOG_METRIC.pack(Opcode.LOG_METRIC, key, commit_id, step, float(value), len(raw)) + raw


def log_metrics_requests(
    key: bytes,
    commit: str | bytes,
    metrics: Iterable[tuple[str, float, int]],
    max_message_bytes: int,
) -> list[tuple[bytes, int]]:
    """The LOG_METRICS requests of (name, value, step) triples, each with its point count:
    as few as the limits allow (65,535 points, `max_message_bytes`). Every point is checked
    before any request is made."""
    commit_id = parse_commit(commit)
    points = [
        MetricPoint(_check_step(step), float(value), _check_name(name))
        for name, value, step in metrics
    ]
    return [
        (_log_points_request(key, commit_id, chunk), len(chunk))
        for chunk in _chunks(points, max_message_bytes)
    ]


def _log_points_request(key: bytes, commit_id: bytes, points: Sequence[MetricPoint]) -> bytes:
    try:
        request = rq.LogMetrics(key_hash=key, commit_id=commit_id, metrics=tuple(points))
    except MalformedRequest as exc:
        raise InvalidRequest(exc.message) from None
    return encode(request)


@dataclass(slots=True)
class ColumnQuery:
    """The QUERY_METRICS of one name's columns, page after page: while `request` is not
    None, send it and hand its DATA `metrics` payload to `take`."""

    request: rq.QueryMetrics | None
    name: bytes

    @classmethod
    def of(
        cls,
        key: bytes,
        commit: str | bytes,
        name: str,
        start_step: int | None,
        end_step: int | None,
        max_points: int | None = None,
    ) -> "ColumnQuery":
        """Steps `start_step`..`end_step` (inclusive) of `name`; with `max_points`, one
        request for at most that many points chosen by LTTB."""
        encoded = _check_name(name).encode()
        request = rq.QueryMetrics(
            key_hash=key,
            commit_id=parse_commit(commit),
            name=name,
            step_from=_check_step(0 if start_step is None else start_step),
            step_to=_check_step(MAX_STEP if end_step is None else end_step),
            max_points=max_points or 0,
            limit=0 if max_points else QUERY_PAGE_SIZE,
        )
        return cls(request, encoded)

    def take(self, payload: bytes) -> tuple[int, Records] | None:
        """(next, records) of the answer to `request`, which moves on to the next page (None
        at the end); None for an empty page of a paged query."""
        request = self.request
        assert request is not None, "the query is over"
        next_index, records = decode_page(payload, self.name)
        if next_index == 0 or request.max_points:
            self.request = None
        elif next_index <= request.after:
            raise ProtocolViolation(f"query page did not advance past record {request.after}")
        else:
            self.request = replace(request, after=next_index)
        return (next_index, records) if len(records) or request.max_points else None


def _chunks(points: list[MetricPoint], max_message_bytes: int) -> Iterable[list[MetricPoint]]:
    """Split into LOG_METRICS bodies of at most 65535 points and max_message_bytes."""
    budget = max_message_bytes - rq.LOG_METRICS_HEAD
    chunk: list[MetricPoint] = []
    size = 0
    for point in points:
        cost = POINT.size + len(point.name.encode())
        if chunk and (len(chunk) == rq.LogMetrics.MAX_POINTS or size + cost > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(point)
        size += cost
    if chunk:
        yield chunk
