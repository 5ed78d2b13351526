"""Hostile and broken peers (PROTOCOL.md sections 2 and 3): the daemon closes transport
violations with the right code, answers every malformed request with an ERROR, is not
starved by slow handshakes or grown by a client that never reads, and never lets a
string from the wire become a path.
"""

import asyncio
import base64
import contextlib
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fetchml.protocol.enums import ErrorCode, JobStatus, Opcode, PruneType
from fetchml.protocol.errors import ProtocolError
from fetchml.protocol.metrics import decode_metrics_payload
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    LogMetric,
    LogMetrics,
    MetricPoint,
    Prune,
    QueryMetrics,
    QueueJob,
    Request,
    Status,
    UpdateJob,
    WatchMetrics,
    WhoAmI,
    decode_request,
    encode_request,
)
from fetchml.protocol.responses import Data, Error, Success, decode_response
from fetchml.server.connection import Connection
from tests.support.config import make_config, raw_config, write_config
from tests.support.daemon import daemons, poll
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, KEYS
from tests.support.wire import RawClient, call_json, keys, query_all

COMMIT = bytes.fromhex("ab" * 20)


async def whoami_ok(client: RawClient) -> None:
    assert (await call_json(client, WhoAmI(key_hash=ADMIN)))["user"] == "admin"


async def closed_with(client: RawClient) -> int | None:
    """Read until the server closes; the close code it sent."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.recv()
    return info.value.rcvd.code if info.value.rcvd else None


async def create(client: RawClient, commit: bytes = COMMIT) -> None:
    created = await client.call(CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="j"))
    assert isinstance(created, Success), created


# -- transport violations -----------------------------------------------------------------


async def test_oversized_message_closes_with_1009(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"max_message_bytes": 131072})  # the lowest allowed
    client = await daemon.client()
    at_limit = await client.call(bytes([0xEE]) + bytes(131071))  # exactly the limit: answered
    assert isinstance(at_limit, Error), at_limit
    assert (at_limit.code, at_limit.message) == (ErrorCode.INVALID_REQUEST, "unknown opcode 0xee")

    await client.send(bytes([Opcode.LOG_METRICS]) + bytes(131072))
    assert await closed_with(client) == 1009
    await whoami_ok(await daemon.client())


async def test_text_frame_closes_with_1003(daemon: Daemon) -> None:
    client = await daemon.client()
    await whoami_ok(client)
    await client.ws.send("WHOAMI")
    assert await closed_with(client) == 1003
    await whoami_ok(await daemon.client())


# -- slowloris ------------------------------------------------------------------------------

SLOW = 1000


async def open_slow_handshakes(
    port: int, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """TCP connections that send part of an HTTP request line, and never the rest."""

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws HTT")
        await writer.drain()
        return reader, writer

    out: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(0, count, 100):
        out += await asyncio.gather(*(one() for _ in range(min(100, count - len(out)))))
    return out


async def dropped(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF or reset), never having answered."""
    try:
        data = await reader.read()
    except ConnectionResetError:
        return True
    assert data == b"", data
    return True


async def honest_client(url: str) -> RawClient:
    """Connect, WHOAMI, CREATE_EXPERIMENT and LOG_METRIC, all successful; print the time."""
    started = time.perf_counter()
    client = RawClient(await connect(url, compression=None))
    await whoami_ok(client)
    await create(client)
    logged = await client.call(
        LogMetric(key_hash=ADMIN, commit_id=COMMIT, step=0, value=1.0, name="honest")
    )
    latency = time.perf_counter() - started
    assert isinstance(logged, Success), logged
    print(
        f"\nhonest client beside {SLOW} slow handshakes: connect + WHOAMI + "
        f"CREATE_EXPERIMENT + LOG_METRIC in {latency * 1000:.0f} ms"
    )
    return client


async def test_slow_handshakes_do_not_starve_an_honest_client(tmp_path: Path) -> None:
    raw = raw_config(tmp_path, server={"open_timeout_s": 5})
    with daemons(tmp_path) as start:
        daemon = await start(write_config(tmp_path / "config.yaml", raw)).wait_ready()
        slow = await open_slow_handshakes(daemon.port, SLOW)
        try:
            client = await honest_client(daemon.url)
            # The daemon drops every unfinished handshake once open_timeout_s runs out.
            drops = asyncio.gather(*(dropped(reader) for reader, _ in slow))
            assert all(await asyncio.wait_for(drops, 90))
        finally:
            for _, writer in slow:
                writer.close()
        assert keys(await query_all(client, COMMIT)) == [("honest", 0)]
        await client.ws.close()
        await daemon.shutdown()


# -- a client that never reads -----------------------------------------------------------------

FLOOD = 50_000
INFLIGHT = 64


async def deaf_websocket(port: int) -> socket.socket:
    """A WebSocket connection on a raw socket with a tiny receive buffer that nobody reads."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: read nothing past the handshake
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def client_frame(payload: bytes) -> bytes:
    """A masked binary frame (mask key 0) of a payload under 126 bytes."""
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + bytes(4) + payload


async def connection_of(daemon: Daemon, port: int) -> Connection:
    """The daemon's side of the connection from local `port`, once its handler runs."""

    def find() -> list[Connection]:
        return [c for c in daemon.app.connections if c.ws.remote_address[1] == port]

    await poll(find, "the daemon to serve the connection")
    (conn,) = find()
    return conn


async def flood_unread(deaf: socket.socket, conn: Connection, honest: RawClient) -> tuple[int, int]:
    """Send FLOOD LOG_METRIC on `deaf`, serve `honest` meanwhile; the peaks of the daemon's
    queue for the connection and of its accepted but unanswered requests."""
    frame = client_frame(
        encode_request(LogMetric(key_hash=ADMIN, commit_id=COMMIT, step=1, value=1.0, name="flood"))
    )
    peak_queue = peak_unanswered = 0

    async def flood() -> None:
        for _ in range(FLOOD // 100):
            await asyncio.get_running_loop().sock_sendall(deaf, frame * 100)

    async def sample() -> None:
        nonlocal peak_queue, peak_unanswered
        while True:
            peak_queue = max(peak_queue, conn.queued)
            peak_unanswered = max(peak_unanswered, conn.accepted - conn.answered)
            await asyncio.sleep(0.0005)

    sampler = asyncio.create_task(sample())
    flooding = asyncio.create_task(flood())
    try:
        await poll(lambda: conn.accepted > INFLIGHT, "the flood to arrive")
        # Someone else is served meanwhile.
        await whoami_ok(honest)
        logged = await honest.call(
            LogMetric(key_hash=ADMIN, commit_id=COMMIT, step=0, value=1.0, name="honest")
        )
        assert isinstance(logged, Success), logged
        assert ("honest", 0) in keys(await query_all(honest, COMMIT))
        during = conn.accepted
        # Every request answered into the socket, or the daemon stopped reading.
        await poll(
            lambda: conn.answered == FLOOD or (conn.ws.paused and conn.queued == INFLIGHT),
            "the flood to be answered or the daemon to stop reading",
            90,
        )
        print(
            f"\n{FLOOD} LOG_METRIC from a client that never reads: the honest client was "
            f"served after {during} of them; {conn.accepted} accepted, {conn.answered} answered; "
            f"peak queue {peak_queue} (limit {INFLIGHT}), peak unanswered {peak_unanswered}"
        )
    finally:
        flooding.cancel()
        sampler.cancel()
        for outcome in await asyncio.gather(flooding, sampler, return_exceptions=True):
            if isinstance(outcome, Exception):  # not the cancellation: a real failure
                raise outcome
    return peak_queue, peak_unanswered


async def test_client_that_never_reads_stays_bounded(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"max_inflight_requests": INFLIGHT})
    honest = await daemon.client()
    await create(honest)
    deaf = await deaf_websocket(int(daemon.url.rsplit(":", 1)[1].removesuffix("/ws")))
    with contextlib.closing(deaf):
        conn = await connection_of(daemon, deaf.getsockname()[1])
        peak_queue, peak_unanswered = await flood_unread(deaf, conn, honest)
        assert 0 < peak_queue <= INFLIGHT
        # Queued, plus one in the writer's hands and one the reader holds.
        assert peak_unanswered <= INFLIGHT + 2
    await poll(lambda: conn not in daemon.app.connections, "the deaf connection to be dropped")
    await whoami_ok(honest)
    await honest.ws.close()


# -- random bytes as requests ----------------------------------------------------------------

RANDOM_MESSAGES = 10_000
CONNECTIONS = 4


def templates(rng: random.Random) -> list[Request]:
    """One valid request of each opcode, admin key, commits of no experiment."""
    commit = rng.randbytes(20)
    return [
        LogMetric(key_hash=ADMIN, commit_id=commit, step=3, value=0.5, name="loss"),
        LogMetrics(
            key_hash=ADMIN,
            commit_id=commit,
            metrics=(MetricPoint(1, 0.1, "a"), MetricPoint(2, 0.2, "bb")),
        ),
        QueryMetrics(key_hash=ADMIN, commit_id=commit, name="loss"),
        WatchMetrics(key_hash=ADMIN, commit_id=commit, name="loss"),
        GetExperiment(key_hash=ADMIN, commit_id=commit),
        CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="fuzz"),
        QueueJob(key_hash=ADMIN, commit_id=commit, priority=5, job_name="fuzz"),
        CancelJob(key_hash=ADMIN, job_name="fuzz"),
        Prune(key_hash=ADMIN, prune_type=PruneType.KEEP_NEWEST, value=1),
        ClaimJob(key_hash=ADMIN, worker_id="w"),
        UpdateJob(key_hash=ADMIN, job_id="j", status=JobStatus.COMPLETED, error="e"),
        Status(key_hash=ADMIN),
        ListExperiments(key_hash=ADMIN),
        WhoAmI(key_hash=ADMIN),
    ]


def random_message(rng: random.Random) -> bytes:
    """Random bytes (0..300), a valid opcode and key with a random body, or a valid
    request with a byte changed, cut short or extended."""
    roll = rng.random()
    if roll < 0.35:
        return rng.randbytes(rng.randint(0, 300))
    if roll < 0.65:
        head = bytes([rng.choice(range(0x01, 0x14))]) + ADMIN
        return head + rng.randbytes(rng.randint(0, 300 - len(head)))
    message = bytearray(encode_request(rng.choice(templates(rng))))
    match rng.randrange(3):
        case 0:
            message[rng.randrange(len(message))] = rng.randrange(256)
        case 1:
            del message[rng.randrange(len(message)) :]
        case _:
            message += rng.randbytes(rng.randint(1, 20))
    return bytes(message[:300])


def expected_error(message: bytes) -> tuple[ErrorCode, str] | None:
    """What the daemon must answer (PROTOCOL.md section 3: decode, then key, then
    existence); None for a valid request with effects, which the test does not send."""
    try:
        request = decode_request(message)
    except ProtocolError as exc:
        return ErrorCode.INVALID_REQUEST, exc.message
    if request.key_hash != ADMIN:
        return ErrorCode.AUTHENTICATION_FAILED, "Invalid API key"
    if isinstance(request, LogMetric | LogMetrics | QueryMetrics | WatchMetrics | GetExperiment):
        return ErrorCode.RESOURCE_NOT_FOUND, f"experiment {request.commit_hex} not found"
    return None


def corpus(seed: int) -> Iterator[tuple[bytes, tuple[ErrorCode, str]]]:
    rng = random.Random(seed)
    made = 0
    while made < RANDOM_MESSAGES:
        message = random_message(rng)
        expected = expected_error(message)
        if expected is not None:
            made += 1
            yield message, expected


async def send_and_check(
    client: RawClient, cases: list[tuple[bytes, tuple[ErrorCode, str]]]
) -> list[str]:
    """Pipeline every message; the mismatches, described."""

    async def send_all() -> None:
        for message, _ in cases:
            await client.send(message)

    sender = asyncio.create_task(send_all())
    wrong = []
    try:
        for message, (code, text) in cases:
            response = await client.recv()
            if not (
                isinstance(response, Error) and (response.code, response.message) == (code, text)
            ):
                wrong.append(f"{message.hex()}: expected {code.name} {text!r}, got {response}")
    finally:
        await sender
    return wrong


async def test_random_bytes_each_get_the_right_error(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(rate_limit={"control_requests_per_minute": 10_000_000})
    cases = list(corpus(seed=1009))
    codes = {code.name: 0 for code in ErrorCode}
    for _, (code, _) in cases:
        codes[code.name] += 1
    print(f"\n{len(cases)} messages: {', '.join(f'{k} {v}' for k, v in codes.items() if v)}")

    # A valid handshake key: the bad keys among the messages are answered, never throttled.
    bound = {"X-API-Key": KEYS["admin"][1]}
    clients = [await daemon.client(additional_headers=bound) for _ in range(CONNECTIONS)]
    results = await asyncio.gather(
        *(send_and_check(c, cases[n::CONNECTIONS]) for n, c in enumerate(clients))
    )
    wrong = [line for result in results for line in result]
    assert wrong == [], f"{len(wrong)} wrong answers, first: {wrong[:5]}"

    # Still serving, on the same connections and new ones; no experiment was made.
    assert list(daemon.config.storage.base_path.glob("[0-9a-f]*")) == []
    for client in [*clients, await daemon.client()]:
        await whoami_ok(client)
    await create(clients[0])
    logged = await clients[1].call(
        LogMetric(key_hash=ADMIN, commit_id=COMMIT, step=0, value=1.0, name="after")
    )
    assert isinstance(logged, Success), logged
    assert keys(await query_all(clients[2], COMMIT)) == [("after", 0)]
    for client in clients:
        await client.ws.close()


# -- path traversal ------------------------------------------------------------------------------

TOKEN = f"pwned-{uuid.uuid4().hex[:12]}"
TRAVERSALS = [
    f"../{TOKEN}",
    f"../../../../{TOKEN}",
    f"../../../../../../../../../../tmp/{TOKEN}",
    f"/tmp/{TOKEN}",
    f"a/../../{TOKEN}/b",
    f"./{TOKEN}",
    f"..\\..\\{TOKEN}",
    f"%2e%2e%2f{TOKEN}",
    f"{TOKEN}/../../..",
    "..",
    "/",
]
SKIP_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def named_like(token: str, roots: list[Path], shallow: list[Path]) -> list[str]:
    """Paths whose name holds `token`: anywhere under `roots`, directly in `shallow`."""
    found = []
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS]
            found += [os.path.join(directory, n) for n in subdirs + files if token in n]
    for parent in shallow:
        found += [str(parent / n) for n in os.listdir(parent) if token in n]
    return found


async def traverse_every_string_field(daemon: Daemon, client: RawClient) -> None:
    for n, text in enumerate(TRAVERSALS):
        commit = bytes([n + 1]) * 20
        created = await client.call(
            CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name=text)
        )
        assert isinstance(created, Success), created
        queued = await call_json(
            client, QueueJob(key_hash=ADMIN, commit_id=commit, priority=5, job_name=text)
        )
        claimed = await call_json(client, ClaimJob(key_hash=ADMIN, worker_id=text))
        assert (claimed["id"], claimed["worker_id"]) == (queued["id"], text)
        updated = await client.call(
            UpdateJob(key_hash=ADMIN, job_id=claimed["id"], status=JobStatus.FAILED, error=text)
        )
        assert isinstance(updated, Success), updated
        unknown = await client.call(
            UpdateJob(key_hash=ADMIN, job_id=text, status=JobStatus.COMPLETED, error=text)
        )
        assert isinstance(unknown, Error) and unknown.code == ErrorCode.JOB_NOT_FOUND, unknown
        cancelled = await client.call(CancelJob(key_hash=ADMIN, job_name=text))
        assert isinstance(cancelled, Error) and cancelled.code == ErrorCode.JOB_NOT_FOUND

        names = [text, f"{text}/x", f"x/{text}"]
        logged = await client.call(
            LogMetric(key_hash=ADMIN, commit_id=commit, step=0, value=1.0, name=names[0])
        )
        assert isinstance(logged, Success), logged
        points = tuple(MetricPoint(step, 2.0, name) for step, name in enumerate(names[1:], 1))
        batch = await client.call(LogMetrics(key_hash=ADMIN, commit_id=commit, metrics=points))
        assert isinstance(batch, Success), batch
        for step, name in enumerate(names):
            page = await client.call(QueryMetrics(key_hash=ADMIN, commit_id=commit, name=name))
            assert isinstance(page, Data), page
            assert keys(decode_metrics_payload(page.payload).records) == [(name, step)]
        watcher = await daemon.client()
        watched = await watcher.call(WatchMetrics(key_hash=ADMIN, commit_id=commit, name=text))
        assert isinstance(watched, Success), watched
        pushed = decode_response(await watcher.ws.recv())  # type: ignore[arg-type]
        assert isinstance(pushed, Data), pushed
        assert keys(decode_metrics_payload(pushed.payload).records) == [(text, 0)]
        await watcher.ws.close()

    for path in (f"/ws/../{TOKEN}", f"/../../{TOKEN}", f"/%2e%2e/{TOKEN}"):
        host = daemon.url.removesuffix("/ws")
        with pytest.raises(InvalidStatus) as info:
            await connect(host + path, compression=None)
        assert info.value.response.status_code == 404


async def test_no_string_from_the_wire_becomes_a_path(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    deep = tmp_path / "root" / "a" / "b" / "c" / "d" / "e"  # "../" x5 stays inside root
    deep.mkdir(parents=True)
    config = make_config(
        tmp_path,
        storage={"base_path": str(deep / "experiments"), "jobs_db": str(deep / "jobs.sqlite3")},
        logging={"audit_file": str(deep / "audit.jsonl")},
    )
    daemon = await start_daemon(config)
    root = tmp_path / "root"
    before = tree(root)
    client = await daemon.client()

    await traverse_every_string_field(daemon, client)
    await client.ws.close()

    made = sorted(tree(root) - before)
    allowed = re.compile(
        r"a/b/c/d/e/(experiments/[0-9a-f]{40}(/files|/meta\.bin|/metrics\.bin"
        r"|/index(/checkpoint|/anchors|/[0-9]+\.col)?)?"
        r"|experiments/\.fetchml-listing|jobs\.sqlite3(-wal|-shm|-journal)?|audit\.jsonl)"
    )
    assert [p for p in made if not allowed.fullmatch(p)] == []
    assert len([p for p in made if p.endswith("metrics.bin")]) == len(TRAVERSALS)
    escaped = named_like(
        TOKEN, [tmp_path, Path.cwd()], [Path("/tmp"), Path("/"), Path.home(), tmp_path.parent]
    )
    assert escaped == []
