"""Responses ready together leave the daemon in one transport write, in request order.

The test counts the writes the daemon's side of a real connection makes: a burst of
LOG_METRIC (one group commit) interleaved with requests refused as they are read (ready
at once) must not cost one write per response.
"""

from collections.abc import Callable
from typing import Any

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.requests import CreateExperiment, LogMetric, encode_request
from fetchml.protocol.responses import Error, Success
from fetchml.server.connection import Connection
from tests.support.daemon import poll
from tests.support.experiments import file_records, metrics_path
from tests.support.inproc import Daemon
from tests.support.keys import hash_of

ADMIN = hash_of("admin")
COMMIT = bytes(range(20))
MISSING = bytes(20)
BURST = 100


def counting_writes(conn: Connection) -> list[int]:
    """Wrap the transport of the daemon's side of `conn`: the sizes of its writes."""
    transport: Any = conn.ws.transport
    write: Callable[[bytes], None] = transport.write
    sizes: list[int] = []

    def counted(data: bytes) -> None:
        sizes.append(len(data))
        write(data)

    transport.write = counted
    return sizes


async def test_acks_ready_together_go_out_in_one_write(daemon: Daemon) -> None:
    client = await daemon.client()
    created = await client.call(
        CreateExperiment(key_hash=ADMIN, commit_id=COMMIT, job_name="writes")
    )
    assert isinstance(created, Success), created
    port = client.ws.local_address[1]
    await poll(
        lambda: [c for c in daemon.app.connections if c.ws.remote_address[1] == port],
        "the daemon to serve the connection",
    )
    (conn,) = [c for c in daemon.app.connections if c.ws.remote_address[1] == port]
    writes = counting_writes(conn)

    # Every third request names no experiment: refused as it is read, answered in its turn.
    burst = [
        LogMetric(
            key_hash=ADMIN,
            commit_id=MISSING if i % 3 == 2 else COMMIT,
            step=i,
            value=i,
            name="loss",
        )
        for i in range(BURST)
    ]
    for request in burst:  # sent without yielding: the daemon reads them as one burst
        await client.send(encode_request(request))
    responses = [await client.recv() for _ in burst]

    for request, response in zip(burst, responses, strict=True):
        if request.commit_id == MISSING:
            assert isinstance(response, Error), response
            assert response.code == ErrorCode.RESOURCE_NOT_FOUND
        else:
            assert isinstance(response, Success) and response.message == "", response
    records = file_records(metrics_path(daemon.config.storage.base_path, COMMIT))
    assert [r.step for r in records] == [i for i in range(BURST) if i % 3 != 2]
    print(f"\n{BURST} responses ready together went out in {len(writes)} writes: {writes}")
    assert len(writes) <= 2
    await client.ws.close()
