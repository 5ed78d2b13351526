"""Speaking the protocol in tests: a raw client, the request tables, and helpers that
check a response's type and shape."""

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fetchml.protocol.enums import ErrorCode, JobStatus, Opcode, PruneType
from fetchml.protocol.metrics import (
    MetricRecord,
    MetricsPage,
    decode_metrics_payload,
    encode_record,
)
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    ListRuns,
    LogMetric,
    LogMetrics,
    LogMetricsAt,
    MetricPoint,
    Prune,
    PrunePreview,
    QueryMetrics,
    QueueJob,
    QueueJobSpec,
    Request,
    Status,
    UpdateJob,
    UpdateRun,
    WatchMetrics,
    WhoAmI,
    encode_request,
)
from fetchml.protocol.responses import Data, Error, Response, StatusReport, Success, decode_response

from .experiments import commit_id
from .keys import ADMIN, hash_of, key_hash


class RawClient:
    """A websockets client speaking the binary protocol, one request at a time or pipelined."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, req: Request | bytes) -> None:
        await self.ws.send(req if isinstance(req, bytes) else encode_request(req))

    async def recv(self) -> Response:
        data = await self.ws.recv()
        assert isinstance(data, bytes)
        return decode_response(data)

    async def call(self, req: Request | bytes) -> Response:
        await self.send(req)
        return await self.recv()


MIN_BODY = {
    Opcode.QUEUE_JOB: 22,
    Opcode.STATUS: 0,
    Opcode.CANCEL_JOB: 1,
    Opcode.PRUNE: 5,
    Opcode.LOG_METRIC: 33,
    Opcode.GET_EXPERIMENT: 20,
    Opcode.LOG_METRICS: 22,
    Opcode.CREATE_EXPERIMENT: 21,
    Opcode.LIST_EXPERIMENTS: 0,
    Opcode.QUERY_METRICS: 45,
    Opcode.WATCH_METRICS: 29,
    Opcode.CLAIM_JOB: 1,
    Opcode.UPDATE_JOB: 4,
    Opcode.WHOAMI: 0,
    Opcode.PRUNE_PREVIEW: 5,
    Opcode.UPDATE_RUN: 22,
    Opcode.LOG_METRICS_AT: 22,
    Opcode.QUEUE_JOB_SPEC: 24,
    Opcode.LIST_RUNS: 2,
}
"""Minimum body lengths of PROTOCOL.md section 3 (every string empty, every count zero)."""


def sample_request(op: Opcode, key: bytes, cid: bytes, job_id: str = "no-such-job") -> Request:
    """A well-formed request of each opcode."""
    builders: dict[Opcode, Callable[[], Request]] = {
        Opcode.QUEUE_JOB: lambda: QueueJob(key_hash=key, commit_id=cid, priority=5, job_name="job"),
        Opcode.STATUS: lambda: Status(key_hash=key),
        Opcode.CANCEL_JOB: lambda: CancelJob(key_hash=key, job_name="job"),
        Opcode.PRUNE: lambda: Prune(key_hash=key, prune_type=PruneType.KEEP_NEWEST, value=1000),
        Opcode.LOG_METRIC: lambda: LogMetric(
            key_hash=key, commit_id=cid, step=1, value=0.5, name="loss"
        ),
        Opcode.GET_EXPERIMENT: lambda: GetExperiment(key_hash=key, commit_id=cid),
        Opcode.LOG_METRICS: lambda: LogMetrics(
            key_hash=key, commit_id=cid, metrics=(MetricPoint(1, 0.5, "loss"),)
        ),
        Opcode.CREATE_EXPERIMENT: lambda: CreateExperiment(
            key_hash=key, commit_id=cid, job_name="job"
        ),
        Opcode.LIST_EXPERIMENTS: lambda: ListExperiments(key_hash=key),
        Opcode.QUERY_METRICS: lambda: QueryMetrics(key_hash=key, commit_id=cid),
        Opcode.WATCH_METRICS: lambda: WatchMetrics(key_hash=key, commit_id=cid),
        Opcode.CLAIM_JOB: lambda: ClaimJob(key_hash=key, worker_id="gpu-0"),
        Opcode.UPDATE_JOB: lambda: UpdateJob(
            key_hash=key, job_id=job_id, status=JobStatus.COMPLETED
        ),
        Opcode.WHOAMI: lambda: WhoAmI(key_hash=key),
        Opcode.PRUNE_PREVIEW: lambda: PrunePreview(
            key_hash=key, prune_type=PruneType.KEEP_NEWEST, value=1000
        ),
        Opcode.UPDATE_RUN: lambda: UpdateRun(key_hash=key, commit_id=cid, patch="{}"),
        Opcode.LOG_METRICS_AT: lambda: LogMetricsAt(
            key_hash=key,
            commit_id=cid,
            count=1,
            records=encode_record(int(time.time()), 1, 0.5, b"loss"),
        ),
        Opcode.QUEUE_JOB_SPEC: lambda: QueueJobSpec(
            key_hash=key, commit_id=cid, priority=5, job_name="job", spec='{"command":["true"]}'
        ),
        Opcode.LIST_RUNS: lambda: ListRuns(key_hash=key),
    }
    return builders[op]()


# -- responses ---------------------------------------------------------------------------


def error_of(resp: Response, code: ErrorCode, message: str | None = None) -> Error:
    assert isinstance(resp, Error), resp
    assert resp.code == code, resp
    if message is not None:
        assert resp.message == message, resp
    return resp


def data_of(resp: Response, data_type: str) -> Any:
    """The parsed JSON payload of a DATA response of that type."""
    assert isinstance(resp, Data), resp
    assert resp.data_type == data_type
    return json.loads(resp.payload)


def status_of(resp: Response) -> Any:
    assert isinstance(resp, StatusReport), resp
    return json.loads(resp.status_json)


def page_of(resp: Response) -> MetricsPage:
    assert isinstance(resp, Data), resp
    assert resp.data_type == "metrics"
    return decode_metrics_payload(resp.payload)


def success_of(resp: Response, message: str | None = None) -> Success:
    assert isinstance(resp, Success), resp
    if message is not None:
        assert resp.message == message
    return resp


def keys(records: list[MetricRecord]) -> list[tuple[str, int]]:
    return [(r.name, r.step) for r in records]


async def closed_with(client: RawClient) -> int:
    """The close code the server sent, once the connection is closed."""
    try:
        while True:
            await client.recv()
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code


# -- requests ----------------------------------------------------------------------------


async def create(client: RawClient, label: str, user: str = "admin", job: str = "exp") -> bytes:
    cid = commit_id(label)
    req = CreateExperiment(key_hash=hash_of(user), commit_id=cid, job_name=job)
    success_of(await client.call(req))
    return cid


async def log(
    client: RawClient, cid: bytes, points: Iterable[tuple[int, float, str]], user: str = "admin"
) -> None:
    metrics = tuple(MetricPoint(*p) for p in points)
    req = LogMetrics(key_hash=hash_of(user), commit_id=cid, metrics=metrics)
    success_of(await client.call(req), str(len(metrics)))


async def queue(
    client: RawClient, user: str, cid: bytes, name: str, priority: int = 5
) -> dict[str, Any]:
    req = QueueJob(key_hash=hash_of(user), commit_id=cid, priority=priority, job_name=name)
    job: dict[str, Any] = data_of(await client.call(req), "job")
    return job


async def query_all(
    client: RawClient, commit: bytes, key: bytes = ADMIN, after: int = 0
) -> list[MetricRecord]:
    """Every record of the valid prefix from index `after`, following QUERY_METRICS pages."""
    out: list[MetricRecord] = []
    while True:
        response = await client.call(QueryMetrics(key_hash=key, commit_id=commit, after=after))
        assert isinstance(response, Data), response
        page = decode_metrics_payload(response.payload)
        out += page.records
        if page.next == 0:
            return out
        after = page.next


async def call_json(client: RawClient, request: Request) -> Any:
    response = await client.call(request)
    assert isinstance(response, Data), response
    return json.loads(response.payload)


async def expect_error(
    client: RawClient, request: Request, code: ErrorCode, message: str | None = None
) -> Error:
    return error_of(await client.call(request), code, message)


async def user(client: RawClient, raw_key: str) -> str:
    whoami = data_of(await client.call(WhoAmI(key_hash=key_hash(raw_key))), "whoami")
    return str(whoami["user"])
