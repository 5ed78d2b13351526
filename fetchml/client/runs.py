"""The run half of the Client API: run documents (UPDATE_RUN), run listings (LIST_RUNS)
and points that carry their own timestamps (LOG_METRICS_AT).

A run is an experiment whose ID is a random 20-byte value rather than a git
commit; its document (name, project, params, tags, status...) is `run.json`
beside its metrics. Experiments made the old way have no document (`run` None).
"""

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fetchml.protocol import requests as rq
from fetchml.protocol import shapes
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.metrics import acked_records, encode_record

from .errors import InvalidRequest, ProtocolViolation
from .models import _read, parse_commit
from .pipeline import Pipeline, encode

RUN_STATUSES = ("running", "finished", "failed", "crashed")


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A run document: what the client wrote, and the server's times (Unix seconds)."""

    name: str
    project: str
    git_commit: str | None
    params: dict[str, Any]
    tags: tuple[str, ...]
    notes: str
    host: str | None
    pid: int | None
    status: str | None
    output: str
    created_at: int | None
    started_at: int | None
    ended_at: int | None
    heartbeat_at: int | None

    @classmethod
    def from_json(cls, obj: Any) -> "Run":
        doc = _read(shapes.read_run, obj)
        try:
            return cls(**{name: doc[name] for name in _RUN_FIELDS} | {"tags": tuple(doc["tags"])})
        except (KeyError, TypeError) as exc:
            raise ProtocolViolation(f"run: malformed document ({exc})") from None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RUN_FIELDS} | {"tags": list(self.tags)}


_RUN_FIELDS = tuple(Run.__dataclass_fields__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """One LIST_RUNS row: the experiment's ID (40 hex), its record count, its meta.bin
    fields (None when unreadable) and its run document (None without one)."""

    id: str
    metrics_count: int
    timestamp: int | None
    job_name: str | None
    user: str | None
    run: Run | None

    @property
    def name(self) -> str:
        """The run's name, else the job name, else the ID."""
        if self.run is not None:
            return self.run.name
        return self.job_name or self.id

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "RunSummary":
        """From one row as shapes.read_runs gives it."""
        run = values["run"]
        return cls(**values | {"run": None if run is None else Run.from_json(run)})


@dataclass(frozen=True, slots=True, kw_only=True)
class RunsPage:
    """One LIST_RUNS page: its rows, every match in the caller's read scope (`total`), and
    the offset of the next page (None at the end)."""

    runs: tuple[RunSummary, ...]
    total: int
    next_offset: int | None

    @classmethod
    def from_json(cls, obj: Any) -> "RunsPage":
        values = _read(shapes.read_runs, obj)
        rows = tuple(RunSummary.from_values(row) for row in values["runs"])
        return cls(runs=rows, total=values["total"], next_offset=values["next_offset"])


def json_text(obj: Mapping[str, Any], what: str) -> str:
    """Compact JSON of a patch or filter; NaN and infinities are refused (send them as the
    strings "NaN", "Infinity", "-Infinity")."""
    try:
        return json.dumps(dict(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{what}: {exc}") from None


class RunsAPI(Pipeline):
    """UPDATE_RUN, LIST_RUNS and LOG_METRICS_AT as typed methods."""

    async def update_run(self, run: str | bytes, patch: Mapping[str, Any] | None = None) -> Run:
        """Apply a JSON merge patch to the run's document (creating it; the experiment must
        exist) and return the document after it. `{}` is a heartbeat."""
        return await self._json(update_run_request(self._key, run, patch), "run", Run.from_json)

    async def list_runs_page(self, filter: Mapping[str, Any] | None = None) -> RunsPage:
        """One page of the runs matching `filter` (keys: user, name, project, status, tag,
        git_commit, params, id, order, limit, offset)."""
        request = rq.ListRuns(key_hash=self._key, filter=json_text(filter or {}, "filter"))
        return await self._json(request, "runs", RunsPage.from_json)

    async def list_runs(
        self, filter: Mapping[str, Any] | None = None, *, page_size: int = 1000
    ) -> AsyncIterator[RunSummary]:
        """Every run matching `filter`, page after page (newest first unless `order` says)."""
        query = dict(filter or {})
        query.setdefault("limit", page_size)
        offset = int(query.get("offset", 0))
        while True:
            page = await self.list_runs_page(query | {"offset": offset})
            for row in page.runs:
                yield row
            if page.next_offset is None or not page.runs:
                return
            offset = page.next_offset

    async def log_metrics_at(
        self, run: str | bytes, points: Iterable[tuple[float, str, float, int]]
    ) -> int:
        """Log (timestamp, name, value, step) points, each stored with its own timestamp
        (Unix seconds, truncated to whole seconds), in one LOG_METRICS_AT per 65,535 points
        or `max_message_bytes`. Returns the number of records acknowledged."""
        total = 0
        for message, count in log_metrics_at_requests(
            self._key, run, points, self._max_message_bytes
        ):
            total += acked_records(await self._success(message), count)
        return total


def update_run_request(
    key: bytes, run: str | bytes, patch: Mapping[str, Any] | None
) -> rq.UpdateRun:
    """The UPDATE_RUN applying `patch` (None: `{}`, a heartbeat) to the run's document."""
    text = json_text(patch or {}, "patch")
    return rq.UpdateRun(key_hash=key, commit_id=parse_commit(run), patch=text)


def log_metrics_at_requests(
    key: bytes,
    run: str | bytes,
    points: Iterable[tuple[float, str, float, int]],
    max_message_bytes: int,
) -> list[tuple[bytes, int]]:
    """The LOG_METRICS_AT requests of (timestamp, name, value, step) points, each with its
    point count: one per 65,535 points or `max_message_bytes`. Every point is checked first."""
    commit_id = parse_commit(run)
    records: list[bytes] = []
    try:
        for timestamp, name, value, step in points:
            records.append(encode_record(int(timestamp), step, float(value), name.encode()))
    except Exception as exc:
        raise InvalidRequest(f"point {len(records)}: {exc}") from None
    requests = []
    for chunk in _chunks(records, max_message_bytes - rq.LOG_METRICS_HEAD):
        try:
            request = rq.LogMetricsAt(
                key_hash=key, commit_id=commit_id, count=len(chunk), records=b"".join(chunk)
            )
        except MalformedRequest as exc:
            raise InvalidRequest(exc.message) from None
        requests.append((encode(request), len(chunk)))
    return requests


def _chunks(records: list[bytes], room: int) -> Iterable[list[bytes]]:
    chunk: list[bytes] = []
    size = 0
    for record in records:
        if chunk and (size + len(record) > room or len(chunk) == rq.LogMetricsAt.MAX_POINTS):
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += len(record)
    if chunk:
        yield chunk
