"""One request at a time: a lone LOG_METRIC is written and acknowledged in the transport's
callback that read it, with no task woken (neither the connection's reader nor its
writer); the record is in metrics.bin before the ack is written. A request behind one
still running waits for the writer, in order."""

import asyncio
from collections.abc import Callable
from typing import Any

from fetchml.frames import write_frames
from fetchml.protocol.requests import (
    CreateExperiment,
    LogMetric,
    QueryMetrics,
    WhoAmI,
    encode_request,
)
from fetchml.protocol.responses import Data, Success
from fetchml.server.connection import Connection
from tests.support.daemon import poll
from tests.support.experiments import file_records, metrics_path
from tests.support.inproc import Daemon
from tests.support.keys import hash_of
from tests.support.wire import page_of

ADMIN = hash_of("admin")
COMMIT = bytes(range(20))
CALLS = 20


async def served(daemon: Daemon, port: int) -> Connection:
    await poll(
        lambda: [c for c in daemon.app.connections if c.ws.remote_address[1] == port],
        "the daemon to serve the connection",
    )
    (conn,) = [c for c in daemon.app.connections if c.ws.remote_address[1] == port]
    return conn


def watching_writes(conn: Connection, held: Callable[[], int]) -> list[tuple[str, int]]:
    """Wrap the daemon side's transport: for each write, the writing task's name and
    the records `held` in the file at that moment."""
    transport: Any = conn.ws.transport
    write: Callable[[bytes], None] = transport.write
    seen: list[tuple[str, int]] = []

    def watched(data: bytes) -> None:
        task = asyncio.current_task()
        seen.append((task.get_name() if task else "", held()))
        write(data)

    transport.write = watched
    return seen


def log(step: int) -> bytes:
    return encode_request(
        LogMetric(key_hash=ADMIN, commit_id=COMMIT, step=step, value=0.5, name="loss")
    )


async def test_a_lone_log_is_written_and_acknowledged_in_the_callback_that_read_it(
    daemon: Daemon,
) -> None:
    client = await daemon.client()
    created = await client.call(CreateExperiment(key_hash=ADMIN, commit_id=COMMIT, job_name="j"))
    assert isinstance(created, Success), created
    conn = await served(daemon, client.ws.local_address[1])
    path = metrics_path(daemon.config.storage.base_path, COMMIT)
    assert isinstance(await client.call(log(0)), Success)  # opens the file
    seen = watching_writes(conn, lambda: len(file_records(path)))

    for step in range(1, CALLS + 1):
        response = await client.call(log(step))
        assert isinstance(response, Success) and response.message == "", response

    print(f"\nacks of {CALLS} lone logs written by: {sorted({name for name, _ in seen})}")
    assert len(seen) == CALLS  # one write per ack
    assert {name for name, _ in seen} == {""}  # in the transport's callback, no task
    assert [held for _, held in seen] == list(range(2, CALLS + 2))  # written before its ack
    assert [r.step for r in file_records(path)] == list(range(CALLS + 1))
    await client.ws.close()


async def test_a_log_behind_a_running_request_is_answered_in_order(daemon: Daemon) -> None:
    client = await daemon.client()
    created = await client.call(CreateExperiment(key_hash=ADMIN, commit_id=COMMIT, job_name="j"))
    assert isinstance(created, Success), created
    await client.send(WhoAmI(key_hash=ADMIN))  # a barrier: the writer runs it
    await client.send(log(1))
    first, second = await client.recv(), await client.recv()
    assert isinstance(first, Data) and first.data_type == "whoami", first
    assert isinstance(second, Success), second
    path = metrics_path(daemon.config.storage.base_path, COMMIT)
    assert [r.step for r in file_records(path)] == [1]
    await client.ws.close()


async def test_logs_and_a_barrier_read_together_are_answered_and_applied_in_order(
    daemon: Daemon,
) -> None:
    """Frames that arrive in one read: the logs before a barrier are taken in by the
    callback; the barrier and everything after it wait for the reader, in order. A QUERY
    (a barrier) between logs sees exactly the logs before it."""
    client = await daemon.client()
    created = await client.call(CreateExperiment(key_hash=ADMIN, commit_id=COMMIT, job_name="j"))
    assert isinstance(created, Success), created
    query = QueryMetrics(key_hash=ADMIN, commit_id=COMMIT, name="loss")
    batch = [log(1), log(2), encode_request(query), log(3), encode_request(query), log(4)]
    write_frames(client.ws, batch)  # one transport write
    responses = [await client.recv() for _ in batch]
    kinds = [type(r).__name__ for r in responses]
    assert kinds == ["Success", "Success", "Data", "Success", "Data", "Success"], responses
    assert [r.step for r in page_of(responses[2]).records] == [1, 2]
    assert [r.step for r in page_of(responses[4]).records] == [1, 2, 3]
    path = metrics_path(daemon.config.storage.base_path, COMMIT)
    assert [r.step for r in file_records(path)] == [1, 2, 3, 4]
    await client.ws.close()
