"""close(), flush(), the `with` and interpreter exit are bounded by close_timeout."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from fetchml.client import DeliveryTimeout, MetricLogger
from tests.support.daemon import ROOT, free_port
from tests.support.daemon import DaemonProcess as ServerProcess
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY

CLOSE_TIMEOUT = 0.5
BOUND = CLOSE_TIMEOUT + 1.0


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A real TCP server that accepts, reads and never answers (a hung daemon)."""
    server = socket.create_server(("127.0.0.1", 0))
    peers: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                peer, _ = server.accept()
                peer.setblocking(False)
                peers.append(peer)
            for sock in peers:
                with contextlib.suppress(BlockingIOError, OSError):
                    sock.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{server.getsockname()[1]}/ws"
    stop.set()
    thread.join(5)
    for sock in [*peers, server]:
        sock.close()


def timed_close(ml: MetricLogger, points: int) -> float:
    start = time.monotonic()
    with pytest.raises(DeliveryTimeout) as timeout:
        ml.close()
    elapsed = time.monotonic() - start
    assert timeout.value.undelivered == points
    assert f"{points} metric points not delivered within 0.5 s" in str(timeout.value)
    return elapsed


def test_close_is_bounded_when_nobody_listens() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    ml = MetricLogger(commit_of("bounds-refused"), url, ADMIN_KEY, close_timeout=CLOSE_TIMEOUT)
    for step in range(100):
        ml.log("loss", 1.0, step=step)
    elapsed = timed_close(ml, 100)
    print(f"close() with nobody listening: {elapsed:.3f} s")
    assert elapsed < BOUND
    quiet = MetricLogger(
        commit_of("bounds-refused"), url, ADMIN_KEY, close_timeout=0.2, on_error="warn"
    )
    quiet.log("loss", 1.0)
    assert quiet.flush() is False and quiet.close() is False


def test_start_and_close_are_bounded_against_a_silent_server(silent_url: str) -> None:
    start = time.monotonic()
    ml = MetricLogger(
        commit_of("bounds-silent"), silent_url, ADMIN_KEY, close_timeout=CLOSE_TIMEOUT
    )
    started = time.monotonic() - start
    for step in range(10):
        ml.log("loss", 1.0, step=step)
    elapsed = timed_close(ml, 10)
    print(f"silent server: constructor {started:.3f} s, close() {elapsed:.3f} s")
    assert started < BOUND and elapsed < BOUND


def test_flush_and_close_are_bounded_when_the_daemon_is_stopped(
    server_process: ServerProcess,
) -> None:
    """SIGSTOP the daemon under a connected logger: nothing is acknowledged any more."""
    server_process.start()
    ml = MetricLogger(
        commit_of("bounds-sigstop"), server_process.url, ADMIN_KEY, close_timeout=CLOSE_TIMEOUT
    )
    ml.log("loss", 0.0, step=0)
    assert ml.flush() is True
    assert server_process.proc is not None
    server_process.proc.send_signal(signal.SIGSTOP)
    try:
        for step in range(1, 11):
            ml.log("loss", 1.0, step=step)
        start = time.monotonic()
        with pytest.raises(DeliveryTimeout, match=r"10 metric points not delivered within 0\.3 s"):
            ml.flush(timeout=0.3)
        flushed = time.monotonic() - start
        elapsed = timed_close(ml, 10)
    finally:
        server_process.proc.send_signal(signal.SIGCONT)
    print(f"stopped daemon: flush(0.3) {flushed:.3f} s, close() {elapsed:.3f} s")
    assert flushed < 0.3 + 1.0 and elapsed < BOUND


def run_script(body: str) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "from fetchml import MetricLogger\n" + body],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - start


def test_exit_is_bounded_and_says_what_was_lost() -> None:
    """A script that never closes its logger: the flush at exit gives up after close_timeout
    and names the points it could not deliver; a `with` block raises (exit status 1)."""
    url = f"ws://127.0.0.1:{free_port()}/ws"
    commit = commit_of("bounds-exit")
    head = f"ml = MetricLogger({commit!r}, {url!r}, {ADMIN_KEY!r}, close_timeout={CLOSE_TIMEOUT})\n"
    code, err, at_exit = run_script(head + "for i in range(7):\n    ml.log('loss', i)\n")
    assert "7 metric points not delivered within 0.5 s" in err, err
    code, err, with_block = run_script(
        f"with MetricLogger({commit!r}, {url!r}, {ADMIN_KEY!r}, close_timeout={CLOSE_TIMEOUT})"
        " as ml:\n    ml.log('loss', 1.0)\n"
    )
    assert code == 1 and "DeliveryTimeout: 1 metric point not delivered" in err, err
    print(
        f"script exit with an unreachable daemon: atexit {at_exit:.3f} s, with {with_block:.3f} s"
    )
