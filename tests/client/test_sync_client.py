"""SyncClient against a daemon subprocess (a blocking client would stall an in-process
daemon's event loop): logging and reading back, errors, URL lists, no thread, the bytes it
sends, idle connections the daemon closes, daemon deaths and restarts, timeouts, wss."""

import asyncio
import contextlib
import itertools
import math
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.sync.server import Server, ServerConnection, serve

from fetchml import SyncClient
from fetchml.client import (
    AuthenticationFailed,
    Client,
    ConnectFailed,
    ConnectionLost,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProtocolViolation,
)
from fetchml.frames import binary_frame, plain_binary_frame, whole_frames
from fetchml.protocol.enums import ErrorCode, LogLevel
from fetchml.protocol.keys import key_hash
from fetchml.protocol.requests import LogMetric, encode_request
from fetchml.protocol.responses import Error, Log, Progress, Success, encode_response
from tests.support.daemon import DaemonProcess, daemon_at, free_port
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY, ANALYST_KEY
from tests.support.tls import self_signed

PAGE_BYTES = 128 << 10
"""The daemon's smallest max_message_bytes: a page holds about 5,000 "loss" records."""
OK = encode_response(Success(timestamp=1, message=""))
Recorder = tuple[str, list[bytes], list[bytes | str]]


def create(url: str, *commits: str) -> None:
    """Create the experiments with the async Client (before a test counts threads)."""

    async def go() -> None:
        async with Client.connect(url, api_key=ADMIN_KEY) as c:
            for commit in commits:
                await c.create_experiment(commit, "sync", exist_ok=True)

    asyncio.run(go())


def stored(url: str, commit: str, name: str) -> list[tuple[int, float]]:
    """(step, value) of every record of `name`, read with the async Client."""

    async def go() -> list[tuple[int, float]]:
        async with Client.connect(url, api_key=ADMIN_KEY) as c:
            return [(m.step, m.value) for m in await c.query(commit, name=name)]

    return asyncio.run(go())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the module's tests (distinct commits), with the smallest pages."""
    proc = daemon_at(
        tmp_path_factory.mktemp("sync"), server={"max_message_bytes": PAGE_BYTES}
    ).start()
    yield proc
    proc.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A websockets server that records each binary message and answers it with what the
    test queued (the answer's packets, in order), else a SUCCESS: (url, received, queued)."""
    received: list[bytes] = []
    queued: list[bytes | str] = []

    def answer(ws: ServerConnection) -> None:
        for message in ws:
            assert isinstance(message, bytes)
            received.append(message)
            packets = queued.copy() or [OK]
            queued.clear()  # before answering: the test queues the next as soon as answered
            for packet in packets:
                ws.send(packet)

    server: Server = serve(answer, "127.0.0.1", 0, compression=None)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws", received, queued
    server.shutdown()
    thread.join()


# -- logging and reading back -------------------------------------------------------------


def test_log_metric_then_read_it_back(daemon: DaemonProcess) -> None:
    commit = commit_of("sync-log-metric")
    create(daemon.url, commit)
    with SyncClient.connect(daemon.url, api_key=ADMIN_KEY) as c:
        assert c.whoami().user == "admin"
        c.log_metric(commit, "loss", 0.5, step=1)
        c.log_metric(bytes.fromhex(commit), "loss", 0.25, step=2)
        columns = c.query_columns(commit, "loss")
        assert not c.closed
    assert c.closed
    assert columns.step.tolist() == [1, 2] and columns.value.tolist() == [0.5, 0.25]
    assert stored(daemon.url, commit, "loss") == [(1, 0.5), (2, 0.25)]
    with pytest.raises(ConnectionLost, match="client closed"):
        c.log_metric(commit, "loss", 1.0)


def test_log_metrics_and_log_metrics_at_in_chunks_read_back_in_pages(
    daemon: DaemonProcess,
) -> None:
    commit = commit_of("sync-log-metrics")
    create(daemon.url, commit)
    count = 12_000  # over 2 pages of the daemon's; over 300 chunks of 200 bytes
    points = [("loss", math.sin(i), i) for i in range(count)]
    with SyncClient.connect(daemon.url, api_key=ADMIN_KEY, max_message_bytes=200) as c:
        assert c.log_metrics(commit, points) == count
        assert c.log_metrics(commit, []) == 0
        stamps = [(1_700_000_000 + i, "lr", i / 8, i) for i in range(50)]
        assert c.log_metrics_at(commit, stamps) == 50
        loss = c.query_columns(commit, "loss")
        lr = c.query_columns(commit, "lr", start_step=10, end_step=19)
        few = c.query_columns(commit, "loss", max_points=100)
        run = c.update_run(commit, {"name": "sync-run", "params": {"lr": 0.1}})
    assert np.array_equal(loss.step, np.arange(count))
    assert np.array_equal(loss.value, np.sin(np.arange(count)))
    assert lr.step.tolist() == list(range(10, 20))
    assert lr.timestamp.tolist() == [1_700_000_000 + i for i in range(10, 20)]
    assert len(few) == 100 and few.step[0] == 0 and few.step[-1] == count - 1
    assert (run.name, run.params) == ("sync-run", {"lr": 0.1})
    assert loss.to_pandas()["value"].iloc[3] == math.sin(3)


def test_chunks_follow_max_message_bytes(recorder: Recorder) -> None:
    url, received, _ = recorder
    commit = commit_of("sync-chunks")
    points = [(f"m{i % 7}", float(i), i) for i in range(300)]
    with SyncClient.connect(url, api_key=ADMIN_KEY, max_message_bytes=200) as c:
        c.log_metrics(commit, points)  # the recorder's SUCCESS acknowledges no count
    assert len(received) > 20
    assert max(len(message) for message in received) <= 200


def test_log_metric_bytes_are_the_codecs(recorder: Recorder) -> None:
    url, received, _ = recorder
    commit = commit_of("sync-bytes")
    calls = [("loss", 0.25, 0), ("λ/acc", math.inf, 4_294_967_295), ("n" * 255, -0.0, 7)]
    with SyncClient.connect(url, api_key=ADMIN_KEY) as c:
        for name, value, step in calls:
            c.log_metric(commit, name, value, step=step)
    key, commit_id = key_hash(ADMIN_KEY), bytes.fromhex(commit)
    assert received == [
        encode_request(LogMetric(key_hash=key, commit_id=commit_id, step=s, value=v, name=n))
        for n, v, s in calls
    ]


def test_bad_arguments_raise_before_anything_is_sent(
    recorder: Recorder,
) -> None:
    url, received, _ = recorder
    commit = commit_of("sync-bad")
    with SyncClient.connect(url, api_key=ADMIN_KEY) as c:
        for name, step in (("", 0), ("x" * 256, 0), ("a\0b", 0), ("ok", -1), ("ok", 2**32)):
            with pytest.raises(InvalidRequest):
                c.log_metric(commit, name, 1.0, step=step)
        with pytest.raises(InvalidRequest):
            c.log_metric("zz", "loss", 1.0)
        with pytest.raises(InvalidRequest):
            c.log_metrics(commit, [("ok", 1.0, 1), ("", 1.0, 2)])
        with pytest.raises(InvalidRequest):
            c.log_metrics_at(commit, [(1.0, "ok", 1.0, -1)])
        with pytest.raises(InvalidRequest):
            c.query_columns(commit, "")
        assert received == []
        c.log_metric(commit, "ok", 1.0)
    assert len(received) == 1


def test_events_go_to_on_event_and_text_is_a_violation(
    recorder: Recorder,
) -> None:
    url, received, queued = recorder
    events: list[Progress | Log] = []
    with SyncClient.connect(url, api_key=ADMIN_KEY, on_event=events.append) as c:
        log = Log(timestamp=1, level=LogLevel.WARNING, message="slow disk")
        queued.extend([encode_response(log), OK])
        c.log_metric(commit_of("sync-events"), "loss", 1.0)
        assert events == [log]
        # Trailing bytes after a SUCCESS; a SUCCESS whose message runs past its end; text.
        for bad in (OK + OK, OK[:-1] + b"\x01", "text"):
            queued.append(bad)
            with pytest.raises(ProtocolViolation):
                c.log_metric(commit_of("sync-events"), "loss", 1.0)
            c.log_metric(commit_of("sync-events"), "loss", 1.0)  # on a new connection
    assert len(received) == 7


# -- errors and URLs ----------------------------------------------------------------------


def test_daemon_errors(daemon: DaemonProcess) -> None:
    with pytest.raises(AuthenticationFailed):
        SyncClient.connect(daemon.url, api_key="fml_not_a_configured_key")
    commit = commit_of("sync-errors")
    create(daemon.url, commit)
    with SyncClient.connect(daemon.url, api_key=ANALYST_KEY) as c:
        with pytest.raises(PermissionDenied):
            c.log_metric(commit, "loss", 1.0)
        assert c.whoami().role == "analyst"  # the connection survives an ERROR
    with SyncClient.connect(daemon.url, api_key=ADMIN_KEY) as c:
        with pytest.raises(NotFound):
            c.query_columns(commit_of("sync-missing"), "loss")
        assert c.whoami().user == "admin"


def test_unreachable_and_url_lists(daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    down = f"ws://127.0.0.1:{free_port()}/ws"
    with pytest.raises(ConnectFailed, match="cannot connect"):
        SyncClient.connect(down, api_key=ADMIN_KEY, open_timeout=2)
    with SyncClient.connect(f"{down},{daemon.url}", api_key=ADMIN_KEY) as c:
        assert c.url == daemon.url
        assert c.whoami().user == "admin"
    monkeypatch.setenv("FETCHML_URL", daemon.url)
    monkeypatch.setenv("FETCHML_API_KEY", ADMIN_KEY)
    with SyncClient.connect() as c:
        assert c.whoami().user == "admin"


def test_no_thread_is_started(daemon: DaemonProcess) -> None:
    commit = commit_of("sync-threads")
    create(daemon.url, commit)
    before = threading.active_count()
    with SyncClient.connect(daemon.url, api_key=ADMIN_KEY) as c:
        c.log_metric(commit, "loss", 1.0)
        c.log_metrics(commit, [("loss", 2.0, 1)])
        c.query_columns(commit, "loss")
        assert threading.active_count() == before
    assert threading.active_count() == before


# -- idle connections, daemon deaths, timeouts ----------------------------------------------


def wait_for_log(proc: DaemonProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log():
        assert time.monotonic() < deadline, f"no {text!r} in the daemon's log:\n{proc.log()}"
        time.sleep(0.02)


def test_an_idle_connection_the_daemon_closed_is_reopened(tmp_path: Path) -> None:
    proc = daemon_at(tmp_path, server={"ping_interval_s": 0.2, "ping_timeout_s": 0.2}).start()
    try:
        commit = commit_of("sync-idle")
        create(proc.url, commit)
        with SyncClient.connect(proc.url, api_key=ADMIN_KEY) as c:
            c.log_metric(commit, "loss", 1.0, step=1)
            wait_for_log(proc, "keepalive ping timeout")  # no Pong: the daemon closed it
            time.sleep(c.idle_check_s)
            c.log_metric(commit, "loss", 2.0, step=2)
            assert c.query_columns(commit, "loss").step.tolist() == [1, 2]
    finally:
        proc.close()


def test_an_idle_connection_answers_the_daemons_pings(tmp_path: Path) -> None:
    proc = daemon_at(tmp_path, server={"ping_interval_s": 0.2, "ping_timeout_s": 1.5}).start()
    try:
        with SyncClient.connect(proc.url, api_key=ADMIN_KEY) as c:
            c.whoami()
            time.sleep(1.2)  # pinged after 0.2 s: the Pong goes with the next call
            c.whoami()
            time.sleep(0.8)  # past the first Ping's timeout
            c.whoami()
        assert "keepalive ping timeout" not in proc.log()
    finally:
        proc.close()


def test_daemon_killed_and_restarted(server_process: DaemonProcess) -> None:
    """A busy connection (a call within idle_check_s of the last) learns of a dead daemon
    from its request: ConnectionLost, then the next call reconnects. An idle one finds
    the connection closed before sending: it reconnects at once, or raises ConnectFailed
    when no daemon answers, and nothing was sent."""
    server_process.start()
    commit = commit_of("sync-killed")
    create(server_process.url, commit)
    with SyncClient.connect(server_process.url, api_key=ADMIN_KEY) as c:
        c.log_metric(commit, "loss", 1.0, step=1)
        c.idle_check_s = 3600.0  # busy: no check before sending
        server_process.kill()
        with pytest.raises(ConnectionLost):
            c.log_metric(commit, "lost", 1.0, step=2)
        with pytest.raises(ConnectFailed):
            c.log_metric(commit, "lost", 1.0, step=3)
        server_process.start()
        c.log_metric(commit, "loss", 4.0, step=4)

        c.idle_check_s = 0.0  # every call checks first
        server_process.kill()
        server_process.start()
        c.log_metric(commit, "loss", 5.0, step=5)
        server_process.kill()
        with pytest.raises(ConnectFailed):
            c.log_metric(commit, "lost", 1.0, step=6)
        server_process.start()
        c.log_metric(commit, "loss", 7.0, step=7)
        assert c.query_columns(commit, "loss").step.tolist() == [1, 4, 5, 7]
        assert len(c.query_columns(commit, "lost")) == 0


def test_a_call_times_out_on_a_stopped_daemon(daemon: DaemonProcess) -> None:
    commit = commit_of("sync-timeout")
    create(daemon.url, commit)
    timeout = 0.3
    with SyncClient.connect(daemon.url, api_key=ADMIN_KEY, timeout=timeout) as c:
        c.log_metric(commit, "loss", 1.0)
        daemon.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectionLost, match=r"no answer within 0\.3 s"):
                c.log_metric(commit, "loss", 2.0, step=1)
            elapsed = time.monotonic() - started
        finally:
            daemon.send_signal(signal.SIGCONT)
        print(f"timed out after {elapsed:.3f} s (timeout {timeout} s)")
        assert timeout * 0.9 <= elapsed <= max(10 * timeout, 0.2)
        c.log_metric(commit, "loss", 3.0, step=2)
        assert c.query_columns(commit, "loss", start_step=2).value.tolist() == [3.0]


class Interrupted(BaseException):
    """What Ctrl-C raises in the middle of a call (KeyboardInterrupt, here our own)."""


def test_an_interrupted_call_leaves_no_answer_for_the_next() -> None:
    """A call interrupted while it waits drops its connection: the next call gets its own
    answer, not the interrupted one's."""
    count = itertools.count(1)

    def answer_slowly(ws: ServerConnection) -> None:
        for _ in ws:
            n = next(count)
            time.sleep(0.3)
            error = Error(timestamp=1, code=ErrorCode.RESOURCE_NOT_FOUND, message=f"answer {n}")
            with contextlib.suppress(ConnectionClosed):  # the interrupted call's is not read
                ws.send(encode_response(error))

    def interrupt(*_: object) -> None:
        raise Interrupted

    server = serve(answer_slowly, "127.0.0.1", 0, compression=None)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"
        with SyncClient.connect(url, api_key=ADMIN_KEY) as c:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(Interrupted):
                c.whoami()
            for n in (2, 3):
                with pytest.raises(NotFound, match=f"answer {n}"):
                    c.whoami()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        server.shutdown()
        thread.join()


def test_an_answer_followed_by_the_daemons_close_is_still_an_answer() -> None:
    """A daemon shutting down answers what it took, then closes (1001), here in one write:
    the call returns, and the next one opens a new connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)  # a client that fails leaves no thread waiting for it
    connections = 0

    def answer_once_and_close() -> None:
        nonlocal connections
        for _ in range(2):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections += 1
            with conn:
                protocol = ServerProtocol()
                while not (events := protocol.events_received()):
                    protocol.receive_data(conn.recv(65536))
                assert isinstance(events[0], Request)
                protocol.send_response(protocol.accept(events[0]))
                conn.sendall(b"".join(protocol.data_to_send()))
                while not protocol.events_received():
                    protocol.receive_data(conn.recv(65536))
                protocol.send_binary(OK)
                protocol.send_close(1001, "going away")
                conn.sendall(b"".join(protocol.data_to_send()))  # the answer and the close
                conn.recv(1024)

    thread = threading.Thread(target=answer_once_and_close)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}/ws"
        with SyncClient.connect(url, api_key=ADMIN_KEY) as c:
            c.log_metric(commit_of("sync-closing"), "loss", 1.0)
            c.log_metric(commit_of("sync-closing"), "loss", 2.0)
        assert connections == 2
    finally:
        listener.close()
        thread.join()


# -- wss ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_wss_trusted_through_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key)}
    proc = daemon_at(tmp_path, server={"tls": tls}).spawn()
    try:
        wait_for_log(proc, "listening on wss://", 60)
        url = f"wss://127.0.0.1:{proc.fixed_port}/ws"
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            SyncClient.connect(url, api_key=ADMIN_KEY)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        timeout = 0.3
        with SyncClient.connect(url, api_key=ADMIN_KEY, timeout=timeout) as c:
            assert c.whoami().user == "admin"
            proc.send_signal(signal.SIGSTOP)  # the timeout holds over TLS too
            try:
                started = time.monotonic()
                with pytest.raises(ConnectionLost, match=r"no answer within 0\.3 s"):
                    c.whoami()
                elapsed = time.monotonic() - started
            finally:
                proc.send_signal(signal.SIGCONT)
            print(f"wss: timed out after {elapsed:.3f} s (timeout {timeout} s)")
            assert elapsed <= max(10 * timeout, 0.2)
            assert c.whoami().user == "admin"
    finally:
        proc.close()


# -- frames -------------------------------------------------------------------------------


def test_frames_are_the_ones_websockets_writes_and_parses() -> None:
    """The binary frames written without websockets (frames.py) are a client's websockets'
    server parses, and byte for byte a server's websockets writes; what is read is cut
    into whole frames of every kind, wherever a read ends."""
    server = ServerProtocol(state=State.OPEN, max_size=None)
    sizes = (0, 1, 125, 126, 65535, 65536, 70_000)
    payloads = [bytes([n % 251]) * n for n in sizes]
    server.receive_data(b"".join(map(binary_frame, payloads)))
    assert [cast(Frame, frame).data for frame in server.events_received()] == payloads
    for payload in payloads:
        server.send_binary(payload)
    server.send_binary(b"first", fin=False)
    server.send_continuation(b"rest", fin=True)
    server.send_ping(b"p")
    server.send_text(b"text")
    frames = server.data_to_send()
    assert b"".join(frames[: len(payloads)]) == b"".join(map(plain_binary_frame, payloads))
    written = bytearray(b"".join(frames))
    ends = list(itertools.accumulate(map(len, frames)))
    for cut in sorted({*range(12), *(e + d for e in ends for d in (-1, 0, 1, 2, 3, 9))}):
        if 0 <= cut <= len(written):
            spans, end = whole_frames(written[:cut])
            whole = [stop for _, _, stop in spans]
            assert whole == [e for e in ends if e <= cut] and end == (whole[-1] if whole else 0)
    masked = bytearray(binary_frame(b"from a client"))
    assert whole_frames(masked) == ([(0, 6, len(masked))], len(masked))


def test_answers_in_frames_websockets_parses() -> None:
    """A ping written with an answer (ponged, the answer taken), an answer in two fragments,
    an answer of 400 kB read in several pieces, then a plain one."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    pongs: list[bytes] = []
    big = encode_response(Success(timestamp=1, message="x" * 400_000))

    def serve_one() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            protocol = ServerProtocol(max_size=None)
            while not (events := protocol.events_received()):
                protocol.receive_data(conn.recv(65536))
            assert isinstance(events[0], Request)
            protocol.send_response(protocol.accept(events[0]))
            conn.sendall(b"".join(protocol.data_to_send()))
            for step in range(4):
                while True:
                    frames = [e for e in protocol.events_received() if isinstance(e, Frame)]
                    pongs.extend(bytes(f.data) for f in frames if f.opcode is Opcode.PONG)
                    if any(f.opcode is Opcode.BINARY for f in frames):
                        break
                    protocol.receive_data(conn.recv(65536))
                if step == 0:
                    protocol.send_ping(b"are you there")
                    protocol.send_binary(OK)
                elif step == 1:
                    protocol.send_binary(OK[:4], fin=False)
                    protocol.send_continuation(OK[4:], fin=True)
                else:
                    protocol.send_binary(big if step == 2 else OK)
                conn.sendall(b"".join(protocol.data_to_send()))

    thread = threading.Thread(target=serve_one)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}/ws"
        with SyncClient.connect(url, api_key=ADMIN_KEY) as c:
            for step in range(4):
                c.log_metric(commit_of("sync-frames"), "loss", float(step))
    finally:
        listener.close()
        thread.join()
    assert pongs == [b"are you there"]
