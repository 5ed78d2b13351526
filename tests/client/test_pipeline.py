"""Pipeline edge cases the real daemon never produces on demand, against a scripted peer.

The peer is a real websockets server speaking the protocol codec, scripted to
send PROGRESS/LOG packets, to drop the connection with requests pending, or to
answer what was never asked.
"""

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from fetchml.client import Client, ConnectionLost
from fetchml.client.shipper import Answer
from fetchml.protocol.enums import LogLevel
from fetchml.protocol.requests import LogMetrics, MetricPoint, decode_request, encode_request
from fetchml.protocol.responses import Log, Progress, Response, Success, encode_response
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY

Script = Callable[[ServerConnection], Awaitable[None]]
C = commit_of("pipeline")


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    servers: list[Server] = []

    async def start(script: Script) -> str:
        server = await serve(script, "127.0.0.1", 0, compression=None)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_progress_and_log_go_to_the_callback(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    async def script(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, bytes)
            decode_request(message)
            await ws.send(encode_response(Log(timestamp=1, level=LogLevel.INFO, message="hello")))
            await ws.send(encode_response(Progress(timestamp=1, progress_type=0, value=1, total=2)))
            await ws.send(encode_response(Success(timestamp=1, message="")))

    events: list[object] = []
    url = await scripted(script)
    async with Client.connect(url, api_key=ADMIN_KEY, on_event=events.append) as c:
        await asyncio.gather(*(c.log_metric(C, "loss", float(i), i) for i in range(3)))
    assert [type(e).__name__ for e in events] == ["Log", "Progress"] * 3


async def test_connection_loss_fails_every_pending_call(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    received = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        count = 0
        async for _ in ws:
            count += 1
            if count == 100:
                received.set()
                ws.transport.abort()  # no close frame: a crash
                return

    url = await scripted(script)
    c = await Client.connect(url, api_key=ADMIN_KEY)
    calls = [asyncio.ensure_future(c.log_metric(C, "x", 1.0, i)) for i in range(100)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert received.is_set()
    assert all(isinstance(r, ConnectionLost) for r in results)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert "connection closed" in str(results[0])
    assert c.closed and c.in_flight == 0
    with pytest.raises(ConnectionLost):
        await c.whoami()
    await c.close()


async def test_an_unsolicited_response_drops_the_connection(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send(encode_response(Success(timestamp=1, message="")))
        await ws.wait_closed()

    url = await scripted(script)
    c = await Client.connect(url, api_key=ADMIN_KEY)
    await c.wait_closed()
    with pytest.raises(ConnectionLost, match="protocol violation"):
        await c.whoami()
    await c.close()


async def test_a_cancelled_call_does_not_shift_the_others(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    """Each LOG_METRICS is answered with its step as the message: results must match."""
    got_first = asyncio.Event()
    gate = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, bytes)
            request = decode_request(message)
            assert isinstance(request, LogMetrics)
            if not got_first.is_set():
                got_first.set()
                await gate.wait()
            step = request.metrics[0].step
            await ws.send(encode_response(Success(timestamp=1, message=str(step))))

    url = await scripted(script)
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        first = asyncio.ensure_future(c.log_points(C, [MetricPoint(1, 1.0, "x")]))
        await got_first.wait()
        first.cancel()
        rest = asyncio.gather(*(c.log_points(C, [MetricPoint(s, 1.0, "x")]) for s in range(2, 50)))
        gate.set()
        assert await rest == list(range(2, 50))
        assert first.cancelled() and c.in_flight == 0


async def test_an_answer_is_taken_in_the_step_that_reads_it(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    """A batch's answer reaches its handler in the transport's callback that read it (no
    task runs between); a pending request fails in the reader when the connection drops,
    and a request on a lost connection fails at once."""

    async def script(ws: ServerConnection) -> None:
        async for message in ws:
            if len(message) > 1:
                await ws.send(encode_response(Success(timestamp=1, message="ok")))
            else:
                ws.transport.abort()
                return

    handled: list[tuple[object, asyncio.Task[Any] | None]] = []
    url = await scripted(script)
    c = await Client.connect(url, api_key=ADMIN_KEY)

    def then(outcome: Response | BaseException) -> None:
        handled.append((outcome, asyncio.current_task()))

    answer = Answer(then)
    point = (MetricPoint(1, 1.0, "x"),)
    request = LogMetrics(key_hash=c._key, commit_id=bytes(20), metrics=point)
    await c._submit([encode_request(request)], [answer])
    await asyncio.wait_for(asyncio.shield(answer), 10)
    assert handled == [(Success(timestamp=1, message="ok"), None)]
    await c._submit([b"\x00"], [Answer(then)])
    await c.wait_closed()
    lost, task = handled[1]
    assert isinstance(lost, ConnectionLost) and task is c._reader
    await c._submit([b"\x00"], [Answer(then)])
    late, _ = handled[2]
    assert isinstance(late, ConnectionLost)
    await c.close()


@pytest.mark.parametrize("max_in_flight", [1024, 3])
async def test_requests_submitted_together_go_in_one_write(
    scripted: Callable[[Script], Awaitable[str]], max_in_flight: int
) -> None:
    """Ten requests submitted together are one transport write; with room for only three in
    flight they go as the answers free it, every one answered, in order."""

    async def script(ws: ServerConnection) -> None:
        async for message in ws:
            request = decode_request(message)  # type: ignore[arg-type]
            assert isinstance(request, LogMetrics)
            step = request.metrics[0].step
            await ws.send(encode_response(Success(timestamp=1, message=str(step))))

    c = await Client.connect(await scripted(script), api_key=ADMIN_KEY, max_in_flight=max_in_flight)
    transport = c._ws.transport
    writes: list[int] = []
    write = transport.write

    def counted(data: bytes | bytearray | memoryview) -> None:
        writes.append(len(data))
        write(data)

    transport.write = counted  # type: ignore[method-assign]
    messages = [
        encode_request(
            LogMetrics(key_hash=c._key, commit_id=bytes(20), metrics=(MetricPoint(i, 1.0, "x"),))
        )
        for i in range(10)
    ]
    answers: list[asyncio.Future[Response]] = [
        asyncio.get_running_loop().create_future() for _ in messages
    ]
    await c._submit(messages, answers)
    done = await asyncio.wait_for(asyncio.gather(*answers), 10)
    assert [r.message for r in done if isinstance(r, Success)] == [str(i) for i in range(10)]
    if max_in_flight == 3:
        assert len(writes) >= 4
    else:
        assert len(writes) == 1
    await c.close()


async def test_send_now_sends_what_fits_in_flight_and_never_jumps_a_waiter(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    """send_now writes at once as many requests as there is room for in flight; while a
    request waits for room it sends none (it would overtake), and what waited goes first."""
    gate = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        async for message in ws:
            request = decode_request(message)  # type: ignore[arg-type]
            assert isinstance(request, LogMetrics)
            await gate.wait()
            await ws.send(
                encode_response(Success(timestamp=1, message=str(request.metrics[0].step)))
            )

    c = await Client.connect(await scripted(script), api_key=ADMIN_KEY, max_in_flight=3)
    loop = asyncio.get_running_loop()

    def requests(steps: range) -> tuple[list[bytes], list[asyncio.Future[Response]]]:
        point = [(MetricPoint(i, 1.0, "x"),) for i in steps]
        messages = [
            encode_request(LogMetrics(key_hash=c._key, commit_id=bytes(20), metrics=p))
            for p in point
        ]
        return messages, [loop.create_future() for _ in steps]

    first, first_answers = requests(range(5))
    assert c.send_now(first, first_answers) == 3 and c.in_flight == 3
    waiting, waiting_answers = requests(range(3, 5))
    submitted = asyncio.create_task(c._submit(waiting, waiting_answers))
    await asyncio.sleep(0.05)  # it waits for room
    later, later_answers = requests(range(5, 6))
    assert c.send_now(later, later_answers) == 0
    gate.set()
    await asyncio.wait_for(submitted, 10)
    done = await asyncio.wait_for(asyncio.gather(*first_answers[:3], *waiting_answers), 10)
    assert [r.message for r in done if isinstance(r, Success)] == ["0", "1", "2", "3", "4"]
    await c.close()


async def test_a_fault_in_an_answers_handler_ends_the_connection_and_the_reader_raises_it(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    """An answer's handler runs in the transport's callback; if it raises, the connection
    ends, what is pending fails with ConnectionLost, and the reader raises the fault, so
    closing the client re-raises it instead of the fault passing as a lost connection."""

    async def script(ws: ServerConnection) -> None:
        async for _ in ws:
            await ws.send(encode_response(Success(timestamp=1, message="ok")))

    c = await Client.connect(await scripted(script), api_key=ADMIN_KEY)

    def then(outcome: Response | BaseException) -> None:
        raise RuntimeError("a bug in the handler")

    point = (MetricPoint(1, 1.0, "x"),)
    message = encode_request(LogMetrics(key_hash=c._key, commit_id=bytes(20), metrics=point))
    pending = asyncio.get_running_loop().create_future()
    await c._submit([message, message], [Answer(then), pending])
    with pytest.raises(RuntimeError, match="a bug in the handler"):
        await asyncio.wait_for(c.wait_closed(), 10)
    assert c.closed and isinstance(pending.exception(), ConnectionLost)


FRESH_CLIENT = """
import asyncio, resource, sys
from fetchml.client import Client

async def main(url: str, calls: int) -> None:
    async with Client.connect(url, api_key="k") as c:
        for step in range(50):
            await c.log_metric("ab" * 20, "x", 0.5, step=step)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for step in range(calls):
            await c.log_metric("ab" * 20, "x", 0.5, step=step)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_a_fresh_clients_answers_cost_no_page_faults(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    """A plain asyncio protocol gets a fresh 256 KiB object per read, which glibc maps and
    unmaps each time until the process frees a larger block: a script's first connection
    faulted about two pages per answer. The client reads into a buffer it keeps."""

    async def script(ws: ServerConnection) -> None:
        async for _ in ws:
            await ws.send(encode_response(Success(timestamp=1, message="")))

    url = await scripted(script)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FRESH_CLIENT, url, "400", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    faults = float(out.decode().strip())
    print(f"\nminor page faults per answer: {faults:.3f}")
    assert faults < 0.5
