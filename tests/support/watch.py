"""Watching a real in-process daemon: the watched experiment, its writer, and what one
watcher received (WATCH_METRICS pushes as (next, records) packets)."""

import asyncio
from dataclasses import dataclass, field

from fetchml.protocol.metrics import MetricRecord, decode_metrics_payload
from fetchml.protocol.requests import (
    CreateExperiment,
    LogMetric,
    LogMetrics,
    MetricPoint,
    WatchMetrics,
)
from fetchml.protocol.responses import Data, Response, Success
from fetchml.server.watch import Subscriber
from tests.support.experiments import file_records, metrics_path
from tests.support.inproc import Daemon
from tests.support.keys import ADMIN
from tests.support.wire import RawClient

RECV_TIMEOUT_S = 30


def commit_of(n: int) -> bytes:
    return (0xC0FFEE00 + n).to_bytes(20, "big")


def batch(commit: bytes, start: int, count: int, name: str = "loss") -> LogMetrics:
    points = tuple(MetricPoint(step, float(step), name) for step in range(start, start + count))
    return LogMetrics(key_hash=ADMIN, commit_id=commit, metrics=points)


def watch(commit: bytes, from_index: int = 0, name: str = "") -> WatchMetrics:
    return WatchMetrics(key_hash=ADMIN, commit_id=commit, from_index=from_index, name=name)


async def create(daemon: Daemon, commit: bytes) -> RawClient:
    """Create the experiment; returns the (open) writer connection used for it."""
    writer = await daemon.client()
    response = await writer.call(CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="w"))
    assert isinstance(response, Success), response
    return writer


async def write(writer: RawClient, request: LogMetrics | LogMetric) -> None:
    response = await writer.call(request)
    assert isinstance(response, Success), response


def on_disk(daemon: Daemon, commit: bytes) -> list[MetricRecord]:
    return file_records(metrics_path(daemon.config.storage.base_path, commit))


async def recv(client: RawClient) -> Response:
    return await asyncio.wait_for(client.recv(), RECV_TIMEOUT_S)


async def start_watch(daemon: Daemon, request: WatchMetrics) -> RawClient:
    client = await daemon.client()
    response = await client.call(request)
    assert isinstance(response, Success), response
    return client


@dataclass
class Stream:
    """What one watcher received: packets as (next, records)."""

    from_index: int
    packets: list[tuple[int, list[MetricRecord]]] = field(default_factory=list)

    @property
    def next(self) -> int:
        return self.packets[-1][0] if self.packets else self.from_index

    @property
    def records(self) -> list[MetricRecord]:
        return [r for _, records in self.packets for r in records]

    def add(self, response: Response) -> None:
        assert isinstance(response, Data), response
        assert response.data_type == "metrics"
        next_index, records = decode_metrics_payload(response.payload)
        self.packets.append((next_index, records))

    def check_contiguous(self) -> None:
        """Unfiltered: every packet covers exactly its records, starting where the last ended."""
        previous = self.from_index
        for next_index, records in self.packets:
            assert next_index - previous == len(records), (previous, next_index, len(records))
            previous = next_index

    async def read_until(self, client: RawClient, next_index: int) -> None:
        while self.next < next_index:
            self.add(await recv(client))


def subscribers(daemon: Daemon, commit: bytes) -> set[Subscriber]:
    return set(daemon.app.hub._subs.get(commit.hex(), ()))
