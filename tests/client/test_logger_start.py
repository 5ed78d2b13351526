"""MetricLogger's start check and the key in the handshake, against real daemons."""

import asyncio
import hashlib
import time

import pytest

from fetchml.client import (
    AuthenticationFailed,
    Client,
    ConfigurationError,
    InvalidRequest,
    MetricLogger,
    MetricsRejected,
    PermissionDenied,
    startcheck,
)
from tests.support.daemon import DaemonProcess as ServerProcess
from tests.support.experiments import commit_of
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN_KEY, ALICE_KEY, ANALYST_KEY, BOB_KEY, WORKER_KEY


async def test_a_wrong_key_fails_at_connect(daemon: Daemon) -> None:
    """The raw key travels in the handshake, so the daemon refuses a wrong one there."""
    with pytest.raises(AuthenticationFailed, match="Invalid API key"):
        await Client.connect(daemon.url, api_key="not-a-key")
    async with Client.connect(daemon.url, api_key="not-a-key", handshake_key=False) as c:
        with pytest.raises(AuthenticationFailed):
            await c.whoami()  # without it, only the first request finds out


def test_a_wrong_key_raises_in_the_constructor(shared_server: ServerProcess) -> None:
    commit = commit_of("start-wrong-key")
    start = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="Invalid API key"):
        MetricLogger(commit, shared_server.url, "not-a-key")
    print(f"wrong key refused after {time.monotonic() - start:.3f} s")
    assert not (shared_server.data / commit).exists()


def test_a_key_that_may_not_write_raises_in_the_constructor(shared_server: ServerProcess) -> None:
    theirs = commit_of("start-alice-owns")
    with MetricLogger(theirs, shared_server.url, ALICE_KEY) as alice:
        alice.log("loss", 1.0)
    with pytest.raises(PermissionDenied, match=r"bob may not log to experiment .*: Access denied"):
        MetricLogger(theirs, shared_server.url, BOB_KEY)
    with pytest.raises(PermissionDenied, match="lacks jobs:update"):
        MetricLogger(theirs, shared_server.url, ANALYST_KEY)
    # The worker role may append anywhere but create nothing: a missing experiment is fatal.
    missing = commit_of("start-worker-missing")
    with pytest.raises(PermissionDenied, match=r"does not exist and wendy may not create it"):
        MetricLogger(missing, shared_server.url, WORKER_KEY)
    with MetricLogger(theirs, shared_server.url, WORKER_KEY) as worker:
        worker.log("loss", 2.0)
    assert worker.stats().acknowledged == 1
    # A new experiment of one's own is fine, and so is one that exists, for its owner.
    with MetricLogger(commit_of("start-bob-new"), shared_server.url, BOB_KEY) as bob:
        bob.log("loss", 3.0)
    with MetricLogger(theirs, shared_server.url, ALICE_KEY) as again:
        again.log("loss", 4.0)
    assert bob.stats().acknowledged == 1 and again.stats().acknowledged == 1


def test_malformed_commits_raise_at_once() -> None:
    for commit in ("abc", "g" * 40, b"short", 12345):
        with pytest.raises(InvalidRequest, match="commit must be"):
            MetricLogger(commit, "ws://127.0.0.1:9/ws", ADMIN_KEY)  # type: ignore[arg-type]


def test_a_clock_far_ahead_of_the_daemon_raises(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares this machine's clock with the response header's timestamp."""
    commit = commit_of("start-clock")
    monkeypatch.setattr(startcheck, "wall_clock", lambda: time.time() + 400)
    with pytest.raises(ConfigurationError, match=r"clock is 4\d\d s ahead"):
        MetricLogger(commit, shared_server.url, ADMIN_KEY)
    monkeypatch.setattr(startcheck, "wall_clock", lambda: time.time() + 200)
    with MetricLogger(commit, shared_server.url, ADMIN_KEY) as ml:
        ml.log("loss", 1.0)
    assert ml.stats().acknowledged == 1


def test_the_check_runs_when_the_daemon_comes_up_later(server_process: ServerProcess) -> None:
    """An unreachable daemon at start is no error; once it answers, a key that may not
    write gets every buffered point counted in MetricsRejected and log() raises."""
    commit = commit_of("start-later")
    server_process.start()

    async def create() -> None:
        async with Client.connect(server_process.url, api_key=ALICE_KEY) as c:
            await c.create_experiment(commit)

    asyncio.run(create())
    server_process.stop()
    ml = MetricLogger(commit, server_process.url, BOB_KEY)
    for step in range(10):
        ml.log("loss", 1.0, step=step)
    server_process.start()
    deadline = time.monotonic() + 30
    while ml.stats().rejected < 10 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition: until the check has run
    with pytest.raises(PermissionDenied, match="MetricLogger stopped: bob may not log"):
        ml.log("loss", 1.0)
    with pytest.raises(MetricsRejected) as rejected:
        ml.close()
    assert rejected.value.count == 10 and "bob may not log" in str(rejected.value)
    assert not (server_process.data / commit / "metrics.bin").exists()


async def test_keys_a_header_cannot_carry_go_only_in_requests(
    start_daemon: DaemonFactory,
) -> None:
    keys = {"spaced": " spaced key ", "tabbed": "tab\tkey", "uni": "clé-ünïcode"}
    daemon = await start_daemon(
        auth={
            "api_keys": {
                user: {"hash": hashlib.sha256(key.encode()).hexdigest(), "role": "researcher"}
                for user, key in keys.items()
            }
        }
    )
    for user, key in keys.items():
        async with Client.connect(daemon.url, api_key=key) as c:
            assert (await c.whoami()).user == user
