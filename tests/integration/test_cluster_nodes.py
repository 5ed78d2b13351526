"""Cluster nodes against a real redis-server: registration and /health, limits and
bad-key throttling counted across nodes (and per node while Redis is down), fsck --repair
refused while a node is alive. Daemons run in this event loop on one data directory."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.requests import WhoAmI
from fetchml.server import cluster
from fetchml.server.__main__ import main
from fetchml.server.app import App
from fetchml.server.cluster import NodeNameTaken, live_nodes
from fetchml.server.config import ClusterConfig
from tests.support.config import make_config, raw_config, write_config
from tests.support.http import handshake, http_get, samples, status
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ALICE_KEY, UNKNOWN_KEY, hash_of
from tests.support.redis import RedisServer
from tests.support.tls import self_signed
from tests.support.wire import RawClient, error_of

WRONG = [("X-API-Key", "fml_wrong_key_not_configured")]
HEALTH_FIELDS = ["status", "version", "uptime_s", "experiments", "connections", "watchers"]


@pytest.fixture(autouse=True)
def quick_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats every 50 ms, so that a test sees a change within a fraction of a second."""
    monkeypatch.setattr(cluster, "BEAT_S", 0.05)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> float:
    """Seconds until `check()` holds; fails naming `what` after `timeout`."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await anyio.sleep(0.01)
    return time.monotonic() - start


async def health(daemon: Daemon) -> dict[str, Any]:
    response = await http_get(daemon, "/health")
    assert response.status == 200
    body: dict[str, Any] = json.loads(response.body)
    return body


def node_of(daemon: Daemon) -> str:
    return f"{socket.gethostname()}:{daemon.app.port}"


async def two_nodes(start: DaemonFactory, redis: RedisServer, **sections: Any) -> list[Daemon]:
    url = redis.url
    a = await start(cluster={"redis_url": url}, **sections)
    b = await start(cluster={"redis_url": url, "node_name": "node-b"}, **sections)
    names = sorted([node_of(a), "node-b"])
    for d in (a, b):  # each sees both at its next heartbeat
        await until(partial(_has, d, names), f"both nodes in {d.url}'s /health")
    return [a, b]


async def _has(daemon: Daemon, names: list[str]) -> bool:
    return bool((await health(daemon))["nodes"] == names)


async def whoami(client: RawClient) -> ErrorCode | None:
    response = await client.call(WhoAmI(key_hash=hash_of("alice")))
    return getattr(response, "code", None)


# -- registration and /health ----------------------------------------------------------------


async def test_health_names_this_node_and_the_live_ones_and_degrades_while_redis_is_down(
    start_daemon: DaemonFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fetchml.server.cluster")
    a, b = await two_nodes(start_daemon, redis_server)
    body = await health(b)
    assert list(body)[: len(HEALTH_FIELDS)] == HEALTH_FIELDS
    assert (body["status"], body["node"]) == ("ok", "node-b")
    assert (await health(a))["node"] == node_of(a)
    scraped = samples((await http_get(a, "/metrics")).body.decode())
    assert scraped[("fetchml_cluster_nodes", frozenset())] == 2.0
    assert scraped[("fetchml_redis_up", frozenset())] == 1.0

    redis_server.kill()
    for d in (a, b):
        took = await until(partial(_status, d, "degraded"), "degraded")
        print(f"\n{d.app.link and d.app.link.name}: degraded {took * 1000:.0f} ms after SIGKILL")
    assert (await health(a))["nodes"] == sorted([node_of(a), "node-b"])  # the last seen
    await anyio.sleep(5 * cluster.BEAT_S)  # heartbeats fail meanwhile: logged once per node
    assert transitions(caplog) == ["lost", "lost"]
    scraped = samples((await http_get(a, "/metrics")).body.decode())
    assert scraped[("fetchml_redis_up", frozenset())] == 0.0

    redis_server.start()  # same port, empty: each node registers again by itself
    names = sorted([node_of(a), "node-b"])
    for d in (a, b):
        took = await until(partial(_ok_with, d, names), "ok with both nodes again")
        print(f"back to ok with both nodes {took * 1000:.0f} ms after the restart")
    assert transitions(caplog) == ["lost", "lost", "back", "back"]


def transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r for r in caplog.records if r.name == "fetchml.server.cluster"]
    return ["lost" if "unreachable" in r.getMessage() else "back" for r in lines]


async def test_a_password_in_the_url_is_used_and_never_logged(
    start_daemon: DaemonFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "locked", password="s3cret-pw").start()
    try:
        node = await start_daemon(cluster={"redis_url": server.url, "node_name": "n"})
        await until(partial(_status, node, "ok"), "ok (registered and subscribed)")
        server.kill()
        await until(partial(_status, node, "degraded"), "degraded")
        assert "s3cret-pw" not in caplog.text and "unreachable" in caplog.text
    finally:
        server.stop()


async def _status(daemon: Daemon, expected: str) -> bool:
    return bool((await health(daemon))["status"] == expected)


async def _ok_with(daemon: Daemon, names: list[str]) -> bool:
    body = await health(daemon)
    return bool(body["status"] == "ok" and body["nodes"] == names)


async def test_a_node_starts_while_redis_is_down_and_registers_once_it_answers(
    start_daemon: DaemonFactory, redis_server: RedisServer
) -> None:
    redis_server.kill()
    node = await start_daemon(cluster={"redis_url": redis_server.url, "node_name": "late"})
    body = await health(node)
    assert (body["status"], body["node"], body["nodes"]) == ("degraded", "late", [])
    redis_server.start()
    await until(partial(_ok_with, node, ["late"]), "registered once Redis answers")


async def test_a_hung_redis_never_holds_health_and_limits_fall_back_after_the_timeout(
    start_daemon: DaemonFactory, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "TIMEOUT_S", 0.3)
    node = await start_daemon(cluster={"redis_url": redis_server.url})
    client = await node.client()
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # alive, answering nothing
    try:
        start = time.monotonic()
        assert await whoami(client) is None  # waits for the timeout, then counts on this node
        first = time.monotonic() - start
        slowest = 0.0
        while (await health(node))["status"] == "ok":
            assert time.monotonic() - start < 5.0, "never degraded"
        for _ in range(5):
            t = time.monotonic()
            await health(node)
            assert await whoami(client) is None
            slowest = max(slowest, time.monotonic() - t)
        print(f"\nhung Redis: first control request {first * 1000:.0f} ms (timeout 300 ms);")
        print(f"once degraded, slowest /health + WHOAMI {slowest * 1000:.1f} ms")
        assert first < 3.0  # 10x the timeout
        assert slowest < 0.2
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await until(partial(_status, node, "ok"), "ok once Redis answers again")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
async def test_a_rediss_url_connects_over_tls(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "tls", tls=self_signed(tmp_path)).start()
    try:
        node = await start_daemon(cluster={"redis_url": server.url, "node_name": "tls"})
        await until(partial(_status, node, "ok"), "ok over TLS (registered and subscribed)")
        assert (await health(node))["nodes"] == ["tls"]
    finally:
        server.stop()


async def test_standalone_health_has_no_node(daemon: Daemon) -> None:
    body = await health(daemon)
    assert (body["status"], body["node"], body["nodes"]) == ("ok", None, [])


async def test_a_second_live_node_of_the_same_name_refuses_to_start_until_the_first_stops(
    start_daemon: DaemonFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    section = {"redis_url": redis_server.url, "node_name": "gpu-1"}
    first = await start_daemon(cluster=section)
    twin = App(make_config(tmp_path, cluster=section))
    with pytest.raises(NodeNameTaken, match=r"node name 'gpu-1' is held by a live node \(host"):
        await twin.run(None, False)

    first.app.stop_requested.set()  # a clean shutdown removes its registration
    config = ClusterConfig(redis_url=redis_server.url)
    await until(lambda: _no_nodes(config), "the first node's registration removed")
    again = await start_daemon(cluster=section)
    assert (await health(again))["node"] == "gpu-1"


async def test_the_name_of_a_node_that_died_is_free_once_its_entry_expires(
    start_daemon: DaemonFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    import redis.asyncio

    # What a node killed with SIGKILL leaves: its entry, expiring TTL_S after its last beat.
    entry = {"name": "gpu-1", "host": "elsewhere", "pid": 1, "port": 9103, "started": 0.0}
    async with redis.asyncio.from_url(redis_server.url) as r:
        await r.set("fetchml:node:gpu-1", json.dumps(dict(entry, heartbeat=time.time())), px=300)
        await r.sadd("fetchml:nodes", "gpu-1")
    section = {"redis_url": redis_server.url, "node_name": "gpu-1"}
    with pytest.raises(NodeNameTaken, match=r"\(host elsewhere, pid 1, last heartbeat"):
        await App(make_config(tmp_path, cluster=section)).run(None, False)
    await anyio.sleep(0.3)
    node = await start_daemon(cluster=section)
    assert (await health(node))["nodes"] == ["gpu-1"]
    assert (await live_nodes(ClusterConfig(redis_url=redis_server.url)))[0]["pid"] == os.getpid()


async def test_a_node_restarted_after_a_kill_takes_its_name_back_at_once(
    start_daemon: DaemonFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    import redis.asyncio

    dead = subprocess.Popen(["true"])
    dead.wait()
    here = socket.gethostname()
    section = {"redis_url": redis_server.url, "node_name": "gpu-1"}
    for pid, refused in ((os.getpid(), True), (dead.pid, False)):  # alive here, then gone
        entry = {"name": "gpu-1", "host": here, "pid": pid, "port": 9103, "started": 0.0}
        async with redis.asyncio.from_url(redis_server.url) as r:
            await r.set("fetchml:node:gpu-1", json.dumps(dict(entry, heartbeat=time.time())))
            await r.sadd("fetchml:nodes", "gpu-1")
        if refused:
            with pytest.raises(NodeNameTaken, match=rf"\(host {here}, pid {pid}, last"):
                await App(make_config(tmp_path, cluster=section)).run(None, False)
    node = await start_daemon(cluster=section)  # no TTL to wait for: the entry never expires
    assert (await health(node))["nodes"] == ["gpu-1"]
    assert (await live_nodes(ClusterConfig(redis_url=redis_server.url)))[0]["pid"] == os.getpid()


async def _no_nodes(config: ClusterConfig) -> bool:
    return not await live_nodes(config)


# -- limits across nodes -----------------------------------------------------------------------


async def test_the_control_request_limit_is_shared_by_the_nodes(
    start_daemon: DaemonFactory, redis_server: RedisServer
) -> None:
    limit = {"control_requests_per_minute": 4}
    a, b = await two_nodes(start_daemon, redis_server, rate_limit=limit)
    on_a, on_b = await a.client(), await b.client()
    assert [await whoami(c) for c in (on_a, on_b, on_a, on_b)] == [None] * 4
    error_of(await on_a.call(WhoAmI(key_hash=hash_of("alice"))), ErrorCode.SERVER_OVERLOADED)
    assert await whoami(on_b) == ErrorCode.SERVER_OVERLOADED
    assert await whoami(await b.client(additional_headers={"X-API-Key": ALICE_KEY})) == (
        ErrorCode.SERVER_OVERLOADED
    )


async def test_bad_key_failures_on_all_nodes_throttle_the_address_on_each(
    start_daemon: DaemonFactory, redis_server: RedisServer
) -> None:
    a, b = await two_nodes(start_daemon, redis_server)
    for d in (a, b, a, b, a, b):
        assert await status(d, WRONG) == 401
    assert (await status(a), await status(b)) == (101, 101)  # 6 failures: not yet
    # Four more: unknown keys pipelined on a connection without a handshake key, on b.
    client = await b.client()
    for _ in range(4):
        await client.send(WhoAmI(key_hash=UNKNOWN_KEY))
    for _ in range(4):
        error_of(await client.recv(), ErrorCode.AUTHENTICATION_FAILED)
    took = await until(partial(_throttled, a), "the address throttled on the other node too")
    print(f"\nthrottled on node a {took * 1000:.0f} ms after the tenth failure on node b")
    code, headers = await handshake(b)
    assert (code, headers["retry-after"]) == (429, "1")


async def _throttled(daemon: Daemon) -> bool:
    return await status(daemon) == 429


async def test_while_redis_is_down_limits_count_per_node_without_stalling(
    start_daemon: DaemonFactory, redis_server: RedisServer
) -> None:
    a, b = await two_nodes(
        start_daemon, redis_server, rate_limit={"control_requests_per_minute": 2}
    )
    on_a, on_b = await a.client(), await b.client()
    redis_server.kill()
    for d in (a, b):
        await until(partial(_status, d, "degraded"), "degraded")
    slowest = 0.0
    results = []
    for c in (on_a, on_a, on_a, on_b, on_b, on_b):  # each node its own 2 per minute
        start = time.monotonic()
        results.append(await whoami(c))
        slowest = max(slowest, time.monotonic() - start)
    overloaded = ErrorCode.SERVER_OVERLOADED
    assert results == [None, None, overloaded, None, None, overloaded]
    for _ in range(10):  # bad keys: each node counts its own
        start = time.monotonic()
        assert await status(a, WRONG) == 401
        slowest = max(slowest, time.monotonic() - start)
    assert (await status(a), await status(b)) == (429, 101)
    print(f"\nslowest answer while Redis was down: {slowest * 1000:.1f} ms")
    assert slowest < 0.2

    redis_server.start()
    for d in (a, b):
        await until(partial(_status, d, "ok"), "ok again")
    bob = hash_of("bob")
    for c in (on_a, on_b):  # shared again: bob's 2 are spent on the two nodes together
        assert getattr(await c.call(WhoAmI(key_hash=bob)), "code", None) is None
    error_of(await on_a.call(WhoAmI(key_hash=bob)), ErrorCode.SERVER_OVERLOADED)


# -- fsck --------------------------------------------------------------------------------------


async def test_fsck_repair_refuses_while_a_node_is_alive_in_redis(
    start_daemon: DaemonFactory,
    redis_server: RedisServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    section = {"redis_url": redis_server.url, "node_name": "gpu-7"}
    node = await start_daemon(cluster=section)
    # A data directory this machine's flock does not see held: as on another machine.
    elsewhere = tmp_path / "mount"
    elsewhere.mkdir()
    config = write_config(tmp_path / "fsck.yaml", raw_config(tmp_path, cluster=section))
    argv = ["fsck", "--base-path", str(elsewhere), "--repair", "--config", str(config)]
    assert await anyio.to_thread.run_sync(main, argv) == 2
    err = capsys.readouterr().err
    assert (
        f"error: cluster nodes are alive: gpu-7 (pid {os.getpid()} on {socket.gethostname()})"
        in err
    )
    assert "stop them before --repair" in err
    assert await anyio.to_thread.run_sync(main, argv[:3]) == 0  # checking alone is fine

    node.app.stop_requested.set()
    await until(lambda: _no_nodes(ClusterConfig(redis_url=redis_server.url)), "node gone")
    assert await anyio.to_thread.run_sync(main, argv) == 0
    assert "0 experiments checked, 0 problem(s) found" in capsys.readouterr().out

    redis_server.kill()
    assert await anyio.to_thread.run_sync(main, argv) == 2
    assert "error: cannot reach Redis to check for live nodes" in capsys.readouterr().err


def test_the_standalone_daemon_never_imports_redis() -> None:
    code = "import sys, fetchml.server.app, fetchml.server.__main__; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
