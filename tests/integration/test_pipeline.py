"""Pipelining on a real in-process daemon (docs/PROTOCOL.md section 2).

Clients send many requests without waiting; every request gets exactly one final
response, in request order, and metrics.bin holds the records in request order.
"""

import asyncio
import gc
import json
import socket
import time
from collections import Counter

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.metrics import MetricRecord, decode_metrics_payload
from fetchml.protocol.requests import (
    CreateExperiment,
    GetExperiment,
    LogMetric,
    LogMetrics,
    MetricPoint,
    QueryMetrics,
    Request,
    WhoAmI,
    encode_request,
)
from fetchml.protocol.responses import Data, Error, Response, Success
from fetchml.server.connection import Connection
from tests.support.daemon import poll
from tests.support.experiments import file_records, metrics_path
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import hash_of
from tests.support.wire import RawClient

ADMIN = hash_of("admin")


def commit_of(n: int) -> bytes:
    return n.to_bytes(20, "big")


def log(commit: bytes, step: int, name: str = "loss", value: float | None = None) -> LogMetric:
    value = float(step) if value is None else value
    return LogMetric(key_hash=ADMIN, commit_id=commit, step=step, value=value, name=name)


def log_batch(commit: bytes, points: list[tuple[int, float, str]]) -> LogMetrics:
    return LogMetrics(
        key_hash=ADMIN, commit_id=commit, metrics=tuple(MetricPoint(*p) for p in points)
    )


def query(commit: bytes, **fields: int | str) -> QueryMetrics:
    return QueryMetrics(key_hash=ADMIN, commit_id=commit, **fields)  # type: ignore[arg-type]


async def create(client: RawClient, commit: bytes) -> None:
    response = await client.call(
        CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="pipeline")
    )
    assert response == Success(
        timestamp=response.timestamp, message=f"experiment {commit.hex()} created"
    )


async def pipeline(client: RawClient, messages: list[bytes]) -> list[Response]:
    """Send every message without waiting while reading as many responses concurrently."""

    async def send_all() -> None:
        for message in messages:
            await client.send(message)

    sender = asyncio.create_task(send_all())
    responses = [await client.recv() for _ in messages]
    await sender
    return responses


def page(response: Response) -> tuple[int, list[MetricRecord]]:
    assert isinstance(response, Data), response
    assert response.data_type == "metrics"
    next_index, records = decode_metrics_payload(response.payload)
    return next_index, records


def keys(records: list[MetricRecord]) -> list[tuple[str, int, float]]:
    return [(r.name, r.step, r.value) for r in records]


async def test_ten_thousand_log_metric_pipelined(daemon: Daemon) -> None:
    client = await daemon.client()
    commit = commit_of(1)
    await create(client, commit)
    before = int(time.time())

    responses = await pipeline(client, [encode_request(log(commit, i)) for i in range(10_000)])

    assert len(responses) == 10_000
    assert all(isinstance(r, Success) and r.message == "" for r in responses)
    records = file_records(metrics_path(daemon.config.storage.base_path, commit))
    assert keys(records) == [("loss", i, float(i)) for i in range(10_000)]
    assert all(before <= r.timestamp <= int(time.time()) for r in records)
    next_index, queried = page(await client.call(query(commit)))
    assert (next_index, queried) == (0, records)
    await client.ws.close()


async def test_log_metrics_batches_pipelined(daemon: Daemon) -> None:
    client = await daemon.client()
    commit = commit_of(2)
    await create(client, commit)
    sizes = [1 + (i * 37) % 120 for i in range(300)]
    batches: list[list[tuple[int, float, str]]] = []
    step = 0
    for i, size in enumerate(sizes):
        batches.append([(step + j, float(-(step + j)), f"m{(i + j) % 3}") for j in range(size)])
        step += size

    responses = await pipeline(client, [encode_request(log_batch(commit, b)) for b in batches])

    assert [r.message if isinstance(r, Success) else r for r in responses] == [
        str(size) for size in sizes
    ]
    records = file_records(metrics_path(daemon.config.storage.base_path, commit))
    assert [(r.step, r.value, r.name) for r in records] == [p for b in batches for p in b]
    next_index, queried = page(await client.call(query(commit, limit=step)))
    assert (next_index, len(queried)) == (0, step)
    assert queried == records
    await client.ws.close()


async def test_mixed_pipeline_answers_in_order_and_reads_its_writes(daemon: Daemon) -> None:
    client = await daemon.client()
    commit, missing = commit_of(3), commit_of(4)
    wrong_key = b"\x42" * 16
    short_log = bytes([0x0A]) + ADMIN + commit + b"\x00\x01"  # 22 of LOG_METRIC's 33 bytes
    requests: list[Request | bytes] = [
        CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="mixed"),
        log(commit, 1),
        short_log,
        query(commit),
        log(missing, 2),
        log_batch(commit, [(2, 2.0, "loss"), (3, 3.0, "acc"), (4, 4.0, "loss")]),
        bytes([0x7F]) + ADMIN,
        LogMetric(key_hash=wrong_key, commit_id=commit, step=9, value=9.0, name="loss"),
        CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="again"),
        LogMetric(key_hash=hash_of("ana"), commit_id=commit, step=9, value=9.0, name="loss"),
        bytes([0x0A]) + ADMIN,  # header only
        log(commit, 5),
        query(commit, name="loss"),
        GetExperiment(key_hash=ADMIN, commit_id=commit),
        WhoAmI(key_hash=ADMIN),
    ]
    messages = [r if isinstance(r, bytes) else encode_request(r) for r in requests]

    responses = await pipeline(client, messages)

    def shape(r: Response) -> object:
        if isinstance(r, Error):
            return r.code
        if isinstance(r, Success):
            return ("ok", r.message)
        assert isinstance(r, Data)
        return r.data_type

    assert [shape(r) for r in responses] == [
        ("ok", f"experiment {commit.hex()} created"),
        ("ok", ""),
        ErrorCode.INVALID_REQUEST,
        "metrics",
        ErrorCode.RESOURCE_NOT_FOUND,
        ("ok", "3"),
        ErrorCode.INVALID_REQUEST,
        ErrorCode.AUTHENTICATION_FAILED,
        ErrorCode.RESOURCE_ALREADY_EXISTS,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.INVALID_REQUEST,
        ("ok", ""),
        "metrics",
        "experiment",
        "whoami",
    ]
    short = responses[2]
    assert isinstance(short, Error)
    assert "LOG_METRIC" in short.message
    assert "minimum body length 33" in short.message
    assert "actual 22" in short.message
    unknown = responses[6]
    assert isinstance(unknown, Error) and unknown.message == "unknown opcode 0x7f"
    # Read-your-writes: each QUERY sees exactly the LOGs sent before it on this connection.
    assert keys(page(responses[3])[1]) == [("loss", 1, 1.0)]
    assert keys(page(responses[12])[1]) == [
        ("loss", 1, 1.0),
        ("loss", 2, 2.0),
        ("loss", 4, 4.0),
        ("loss", 5, 5.0),
    ]
    experiment = responses[13]
    assert isinstance(experiment, Data)
    doc = json.loads(experiment.payload)
    assert doc["metrics_count"] == 5
    assert [m["step"] for m in doc["metrics"]] == [1, 2, 3, 4, 5]
    await client.ws.close()


async def test_concurrent_connections_each_keep_their_order(daemon: Daemon) -> None:
    setup = await daemon.client()
    commit = commit_of(5)
    await create(setup, commit)
    per_connection = 1500
    clients = [await daemon.client() for _ in range(6)]

    async def run(n: int, client: RawClient) -> list[Response]:
        messages = []
        step = 0
        while step < per_connection:
            if n % 2 and step % 5 == 0:  # odd connections mix in batches
                points = [(step + j, float(n), f"conn{n}") for j in range(5)]
                messages.append(encode_request(log_batch(commit, points)))
                step += 5
            else:
                messages.append(encode_request(log(commit, step, f"conn{n}", float(n))))
                step += 1
        return await pipeline(client, messages)

    results = await asyncio.gather(*(run(n, c) for n, c in enumerate(clients)))

    for responses in results:
        assert all(isinstance(r, Success) for r in responses)
    records = file_records(metrics_path(daemon.config.storage.base_path, commit))
    assert len(records) == per_connection * len(clients)
    counts = Counter((r.name, r.step) for r in records)
    assert set(counts.values()) == {1}
    for n in range(len(clients)):
        steps = [r.step for r in records if r.name == f"conn{n}"]
        assert steps == list(range(per_connection)), f"conn{n} out of order"
    for client in [setup, *clients]:
        await client.ws.close()


async def test_backpressure_bounds_inflight_and_others_are_served(
    start_daemon: DaemonFactory,
) -> None:
    limit = 64
    total = 50_000
    daemon: Daemon = await start_daemon(server={"max_inflight_requests": limit})
    other = await daemon.client()
    commit = commit_of(6)
    await create(other, commit)
    hog = await daemon.client(sock=small_socket(daemon))
    await poll(lambda: len(daemon.app.connections) == 2, "both connections registered")
    (conn,) = [c for c in daemon.app.connections if c.ws.remote_address[1] == local_port(hog)]
    messages = [encode_request(log(commit, i, "hog")) for i in range(total)]

    async def send_all() -> None:
        for message in messages:
            await hog.send(message)

    sender = asyncio.create_task(send_all())
    peak = Peak(conn, daemon, commit.hex())
    monitor = asyncio.create_task(peak.watch())
    try:
        # The hog never reads: its responses fill the socket, the writer blocks, the
        # queue fills and the reader stops reading.
        await poll(lambda: conn.queued == limit or sender.done(), "the hog's queue to fill")
        assert not sender.done(), "all 50,000 requests were taken in while nobody read"
        assert conn.accepted < total

        # Meanwhile another connection is served normally.
        assert isinstance(await other.call(WhoAmI(key_hash=ADMIN)), Data)
        logged = await other.call(log(commit, 7, "other"))
        assert isinstance(logged, Success) and logged.message == ""
        other_page = page(await other.call(query(commit, name="other")))
        assert keys(other_page[1]) == [("other", 7, 7.0)]
        assert not sender.done() and conn.accepted < total  # the hog is still held back

        widen(hog)
        responses = [await hog.recv() for _ in range(total)]
        await sender
    finally:
        peak.stop = True
        await monitor
    assert all(isinstance(r, Success) and r.message == "" for r in responses)
    assert peak.queue <= limit
    assert peak.unanswered <= limit + 2  # the queue, the writer's item, the reader's put
    assert peak.pending <= limit + 2
    records = file_records(metrics_path(daemon.config.storage.base_path, commit))
    assert [r.step for r in records if r.name == "hog"] == list(range(total))
    assert [r.step for r in records if r.name == "other"] == [7]
    await hog.ws.close()
    await other.ws.close()


def small_socket(daemon: Daemon) -> socket.socket:
    """A connected TCP socket with tiny kernel buffers, so the hog's backlog shows at once.

    Without this, loopback buffers (megabytes) swallow the whole 50,000-request run.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", daemon.app.port))
    return sock


def widen(client: RawClient) -> None:
    """Give the hog ordinary buffers again, so reading its backlog is quick."""
    sock = client.ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)


def local_port(client: RawClient) -> int:
    port: int = client.ws.local_address[1]
    return port


class Peak:
    """Samples a server connection's in-flight state until told to stop."""

    def __init__(self, conn: Connection, daemon: Daemon, commit: str) -> None:
        self.conn = conn
        self.daemon = daemon
        self.commit = commit
        self.queue = self.unanswered = self.pending = 0
        self.stop = False

    async def watch(self) -> None:
        assert self.daemon.app.ctx is not None
        store = self.daemon.app.ctx.store
        while not self.stop:
            self.queue = max(self.queue, self.conn.queued)
            self.unanswered = max(self.unanswered, self.conn.accepted - self.conn.answered)
            exp = store.held(self.commit)
            if exp is not None:
                self.pending = max(self.pending, len(exp.queue.pending))
            await asyncio.sleep(0.001)


async def test_aborted_connection_never_makes_its_queued_barrier(
    start_daemon: DaemonFactory,
) -> None:
    """A barrier queued behind answers that never go out (the peer stops reading, then
    resets the connection) is never run, and no coroutine is left unawaited (pytest turns
    the RuntimeWarning into an error)."""
    total = 10_000
    daemon: Daemon = await start_daemon(server={"max_inflight_requests": total + 10})
    other = await daemon.client()
    commit, barrier_commit = commit_of(7), commit_of(8)
    await create(other, commit)
    hog = await daemon.client(sock=small_socket(daemon))
    await poll(lambda: len(daemon.app.connections) == 2, "both connections registered")
    (conn,) = [c for c in daemon.app.connections if c.ws.remote_address[1] == local_port(hog)]
    conn.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for i in range(total):
        await hog.send(encode_request(log(commit, i, "hog")))
    await hog.send(CreateExperiment(key_hash=ADMIN, commit_id=barrier_commit, job_name="late"))
    read = daemon.app.metrics.requests
    await poll(lambda: read["CREATE_EXPERIMENT"] == 2, "the barrier to be read")
    await poll(lambda: conn.ws.paused, "the daemon's writes to stall")
    print(f"\nwrites stalled after {conn.answered} of {total} answers")
    assert conn.answered < total

    hog.ws.transport.abort()  # unread data in the socket: the kernel sends a reset
    await poll(lambda: conn not in daemon.app.connections, "the connection to end")
    gc.collect()

    missing = await other.call(GetExperiment(key_hash=ADMIN, commit_id=barrier_commit))
    assert isinstance(missing, Error) and missing.code == ErrorCode.RESOURCE_NOT_FOUND
    await other.ws.close()
