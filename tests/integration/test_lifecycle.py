"""The daemon as a process: signals, crashes, reloads, systemd notify, check-config.

Every daemon here is `python -m fetchml.server serve` in a subprocess
(tests/support/daemon.py) and gets real signals; clients are real WebSocket connections.
kill -9: tests/reliability/test_kill9.py; a full disk and a second daemon on the same
data directory: tests/reliability/test_files.py.
"""

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.metrics import decode_metrics_payload, scan
from fetchml.protocol.requests import (
    CreateExperiment,
    LogMetric,
    LogMetrics,
    MetricPoint,
    QueryMetrics,
    Request,
    WatchMetrics,
    WhoAmI,
    encode_request,
)
from fetchml.protocol.responses import Data, Error, Success, decode_response
from tests.support.config import raw_config, write_config
from tests.support.daemon import DaemonProcess, daemons, poll, run_cli
from tests.support.experiments import file_records, metrics_path
from tests.support.keys import ADMIN, key_entry, key_hash
from tests.support.wire import RawClient

COMMIT = bytes.fromhex("fe" * 20)
Key = tuple[str, int]
"""A record as the tests know it: (name, step); steps are unique per name."""

Spawn = Callable[..., DaemonProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start daemon processes; any still running at the end is killed."""
    with daemons(tmp_path) as start:
        yield start


async def started(spawn: Spawn, config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
    daemon = spawn(config, env)
    await daemon.wait_ready()
    return daemon


async def create_experiment(daemon: DaemonProcess, commit: bytes = COMMIT) -> None:
    client = await daemon.client()
    response = await client.call(CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="j"))
    assert isinstance(response, Success), response
    await client.ws.close()


def keys_of(path: Path) -> list[Key]:
    return [(r.name, r.step) for r in file_records(path)]


async def query_all(client: RawClient, commit: bytes = COMMIT) -> list[Key]:
    """Every record, following QUERY_METRICS pages (`next` 0 = the end)."""
    out: list[Key] = []
    after = 0
    while True:
        response = await client.call(QueryMetrics(key_hash=ADMIN, commit_id=commit, after=after))
        assert isinstance(response, Data), response
        page = decode_metrics_payload(response.payload)
        out += [(r.name, r.step) for r in page.records]
        if page.next == 0:
            return out
        after = page.next


# -- ingest clients that remember what was acknowledged ----------------------------------


class Ingester:
    """One connection pipelining LOG_METRIC and LOG_METRICS (a window of `window` unanswered
    requests), recording which records were sent and which were acknowledged."""

    def __init__(self, url: str, n: int, window: int = 128) -> None:
        self.url = url
        self.name = f"client{n}"
        self.window = window
        self.sent: list[Key] = []
        self.acked: list[Key] = []
        self.refused: list[Error] = []
        self.close_code: int | None = None

    def request(self, seq: int, i: int) -> tuple[Request, list[Key]]:
        if i % 4 == 3:
            keys = [(self.name, seq + j) for j in range(5)]
            points = tuple(MetricPoint(step, float(step), name) for name, step in keys)
            return LogMetrics(key_hash=ADMIN, commit_id=COMMIT, metrics=points), keys
        request = LogMetric(
            key_hash=ADMIN, commit_id=COMMIT, step=seq, value=float(seq), name=self.name
        )
        return request, [(self.name, seq)]

    async def run(self) -> None:
        ws = await connect(self.url, compression=None, max_size=None)
        slots = asyncio.Semaphore(self.window)
        unanswered: deque[list[Key]] = deque()

        async def send_forever() -> None:
            seq = i = 0
            while True:
                await slots.acquire()
                request, keys = self.request(seq, i)
                unanswered.append(keys)
                self.sent += keys
                await ws.send(encode_request(request))
                seq, i = seq + len(keys), i + 1

        sender = asyncio.create_task(send_forever())
        try:
            while True:
                response = decode_response(await ws.recv())  # type: ignore[arg-type]
                keys = unanswered.popleft()
                slots.release()
                if isinstance(response, Success):
                    self.acked += keys
                else:
                    assert isinstance(response, Error), response
                    self.refused.append(response)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender


@contextlib.asynccontextmanager
async def ingesting(url: str, clients: int, window: int = 128) -> AsyncIterator[list[Ingester]]:
    """Run `clients` ingesters for the body; on exit, wait (bounded) until all have ended."""
    ingesters = [Ingester(url, n, window) for n in range(clients)]
    tasks = [asyncio.create_task(i.run()) for i in ingesters]
    try:
        yield ingesters
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_acked(ingesters: list[Ingester], at_least: int) -> None:
    await poll(
        lambda: all(len(i.acked) >= at_least for i in ingesters),
        f"{at_least} acknowledged records per client",
    )


def check_acknowledged(path: Path, ingesters: list[Ingester]) -> Counter[Key]:
    """Every acknowledged record is in the file exactly once; nothing there was never sent."""
    counts = Counter(keys_of(path))
    acked = [k for i in ingesters for k in i.acked]
    sent = {k for i in ingesters for k in i.sent}
    assert not [k for k in acked if counts[k] != 1], "acknowledged records missing or doubled"
    assert [k for k, n in counts.items() if n > 1] == []
    assert set(counts) <= sent
    for i in ingesters:  # and each connection's records are in its send order
        assert [s for name, s in keys_of(path) if name == i.name] == sorted(
            s for name, s in counts if name == i.name
        )
    return counts


# -- SIGTERM -------------------------------------------------------------------------


class Watcher:
    """A WATCH_METRICS connection from index 0 that records what it got and how it closed."""

    def __init__(self) -> None:
        self.records: list[Key] = []
        self.close_code: int | None = None

    async def run(self, client: RawClient) -> None:
        response = await client.call(WatchMetrics(key_hash=ADMIN, commit_id=COMMIT))
        assert isinstance(response, Success), response
        try:
            while True:
                packet = await client.recv()
                assert isinstance(packet, Data), packet
                page = decode_metrics_payload(packet.payload)
                self.records += [(r.name, r.step) for r in page.records]
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None


async def sigterm_while_ingesting(
    spawn: Spawn, tmp_path: Path, **server: int
) -> tuple[DaemonProcess, list[Ingester], Watcher, Path]:
    """Four clients pipeline metrics and one watches; SIGTERM once each client has 500
    acknowledged records; the daemon must exit 0."""
    config = write_config(tmp_path / "config.yaml", raw_config(tmp_path, server=server))
    daemon = await started(spawn, config)
    await create_experiment(daemon)
    watcher = Watcher()
    watching = asyncio.create_task(watcher.run(await daemon.client()))

    async with ingesting(daemon.url, clients=4) as ingesters:
        await until_acked(ingesters, 500)
        daemon.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.log()
    await asyncio.wait_for(watching, 30)
    return daemon, ingesters, watcher, metrics_path(tmp_path / "experiments", COMMIT)


async def test_sigterm_during_ingest(spawn: Spawn, tmp_path: Path) -> None:
    daemon, ingesters, watcher, path = await sigterm_while_ingesting(spawn, tmp_path)

    assert [i.close_code for i in ingesters] == [1001] * 4
    assert [i.refused for i in ingesters] == [[]] * 4
    data = path.read_bytes()
    assert scan(data).end == len(data), "a graceful stop left a torn tail"
    check_acknowledged(path, ingesters)
    assert watcher.close_code == 1001
    assert watcher.records == keys_of(path)[: len(watcher.records)]
    log = daemon.log()
    assert "received SIGTERM" in log
    assert "server.app: stopped" in log


async def test_sigterm_drain_closes_busy_connections_cleanly(spawn: Spawn, tmp_path: Path) -> None:
    """Clients still sending when the drain starts must not hold the shutdown to its timeout."""
    daemon, ingesters, _, _ = await sigterm_while_ingesting(spawn, tmp_path, shutdown_timeout_s=5)

    assert [i.close_code for i in ingesters] == [1001] * 4
    assert "shutdown timeout" not in daemon.log()


async def test_sigterm_answers_every_request_it_applied(spawn: Spawn, tmp_path: Path) -> None:
    """With a full in-flight queue, a request taken in must not be written yet left unanswered."""
    _, ingesters, _, path = await sigterm_while_ingesting(spawn, tmp_path, max_inflight_requests=4)

    counts = check_acknowledged(path, ingesters)
    acked = {k for i in ingesters for k in i.acked}
    assert sorted(set(counts) - acked) == [], "in metrics.bin but never acknowledged"


# -- SIGHUP and systemd notify -------------------------------------------------------------

CAROL = "fml_test_carol_key"


async def whoami(client: RawClient, raw_key: str) -> Data | Error:
    response = await client.call(WhoAmI(key_hash=key_hash(raw_key)))
    assert isinstance(response, Data | Error), response
    return response


def user_of(response: Data | Error) -> str | ErrorCode:
    if isinstance(response, Error):
        return response.code
    user: str = json.loads(response.payload)["user"]
    return user


class NotifySocket:
    """A fake systemd: an AF_UNIX datagram socket whose path goes in NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.own_dir: Path | None = None
        if len(str(directory)) > 90:  # sun_path holds 108 bytes
            directory = self.own_dir = Path(tempfile.mkdtemp(prefix="fml-", dir="/tmp"))
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    async def next(self, daemon: DaemonProcess) -> list[str]:
        """The next datagram as its `KEY=VALUE` lines; fails at once if the daemon dies."""
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(BlockingIOError):
                return self.sock.recv(4096).decode().split("\n")
            if not daemon.running():
                raise AssertionError(f"daemon exited before notifying:\n{daemon.log()}")
            assert time.monotonic() < deadline, "no notification within 30 s"
            await asyncio.sleep(0.01)

    async def next_then_signal(self, daemon: DaemonProcess, signum: signal.Signals) -> list[str]:
        """Receive a datagram and send `signum` to the daemon the moment it arrives."""

        def recv_and_kill() -> bytes:
            ready, _, _ = select.select([self.sock], [], [], 30)
            assert ready, "no notification within 30 s"
            data = self.sock.recv(4096)
            os.kill(daemon.pid, signum)
            return data

        return (await asyncio.to_thread(recv_and_kill)).decode().split("\n")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        if self.own_dir is not None:
            self.own_dir.rmdir()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


async def reload(daemon: DaemonProcess, notify: NotifySocket) -> None:
    """SIGHUP, then wait for the reload to be over: RELOADING=1, then READY=1."""
    daemon.send_signal(signal.SIGHUP)
    assert (await notify.next(daemon))[0] == "RELOADING=1"
    assert await notify.next(daemon) == ["READY=1"]


async def test_sighup_reloads_keys_without_restart(
    spawn: Spawn, tmp_path: Path, notify: NotifySocket
) -> None:
    raw = raw_config(tmp_path)
    config = write_config(tmp_path / "config.yaml", raw)
    daemon = await started(spawn, config, notify.env)
    assert (await notify.next(daemon))[0] == "READY=1"
    old = await daemon.client()
    assert user_of(await whoami(old, "fml_test_admin_key")) == "admin"
    assert user_of(await whoami(old, CAROL)) == ErrorCode.AUTHENTICATION_FAILED

    raw["auth"]["api_keys"]["carol"] = key_entry(CAROL, "analyst")
    write_config(config, raw)
    await reload(daemon, notify)

    fresh = await daemon.client(additional_headers={"X-API-Key": CAROL})
    assert user_of(await whoami(fresh, CAROL)) == "carol"
    assert user_of(await whoami(old, CAROL)) == "carol"  # the old connection stayed open
    assert user_of(await whoami(old, "fml_test_admin_key")) == "admin"

    config.write_text(config.read_text().replace("analyst", "no-such-role"))
    await reload(daemon, notify)

    assert daemon.running()
    assert "reload failed" in daemon.log()
    assert user_of(await whoami(fresh, CAROL)) == "carol"
    assert user_of(await whoami(old, "fml_test_admin_key")) == "admin"
    newest = await daemon.client(additional_headers={"X-API-Key": CAROL})
    assert user_of(await whoami(newest, CAROL)) == "carol"
    with pytest.raises(InvalidStatus) as refused:
        await daemon.client(additional_headers={"X-API-Key": "fml_not_a_key"})
    assert refused.value.response.status_code == 401
    for client in (old, fresh, newest):
        await client.ws.close()
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0


async def test_sd_notify_ready_reloading_stopping(
    spawn: Spawn, tmp_path: Path, notify: NotifySocket
) -> None:
    config = write_config(tmp_path / "config.yaml", raw_config(tmp_path))
    daemon = spawn(config, notify.env)

    ready = await notify.next(daemon)
    await daemon.wait_ready(timeout=0)  # the listening line was logged before READY=1
    assert ready == ["READY=1", f"STATUS=listening on port {daemon.port}"]
    # A round trip before any signal (signals sent the instant READY=1 arrives are the
    # subject of test_signal_right_after_ready_is_handled).
    client = await daemon.client()
    assert user_of(await whoami(client, "fml_test_admin_key")) == "admin"

    daemon.send_signal(signal.SIGHUP)
    reloading = await notify.next(daemon)
    assert reloading[0] == "RELOADING=1"
    assert len(reloading) == 2 and reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].removeprefix("MONOTONIC_USEC=")) > 0
    assert await notify.next(daemon) == ["READY=1"]
    assert user_of(await whoami(client, "fml_test_admin_key")) == "admin"

    daemon.send_signal(signal.SIGTERM)
    assert await notify.next(daemon) == ["STOPPING=1"]
    assert await daemon.wait_exit() == 0
    with contextlib.suppress(ConnectionClosed):
        await client.ws.close()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
async def test_signal_right_after_ready_is_handled(
    spawn: Spawn, tmp_path: Path, notify: NotifySocket, signum: signal.Signals
) -> None:
    """READY=1 tells systemd the daemon is up: `systemctl reload` or `stop` may follow at once."""
    config = write_config(tmp_path / "config.yaml", raw_config(tmp_path))
    daemon = spawn(config, notify.env)

    assert (await notify.next_then_signal(daemon, signum))[0] == "READY=1"

    if signum == signal.SIGHUP:
        assert (await notify.next(daemon))[0] == "RELOADING=1", daemon.log()
        assert await notify.next(daemon) == ["READY=1"]
        assert daemon.running()
        daemon.send_signal(signal.SIGTERM)
    assert await notify.next(daemon) == ["STOPPING=1"]
    assert await daemon.wait_exit() == 0, daemon.log()


# -- check-config ------------------------------------------------------


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "good.yaml", raw_config(tmp_path))
    result = run_cli("check-config", str(config))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{config}: ok\n", "")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"server": {"max_inflight": 5}}, "server.max_inflight: unknown key"),
        ({"storage": {"durability": "sometimes"}}, "storage.durability"),
        ({"server": {"max_message_bytes": 8 << 20}}, "server.max_message_bytes"),
    ],
    ids=["unknown_key", "bad_choice", "over_limit"],
)
def test_check_config_rejects_a_bad_file(
    tmp_path: Path, change: dict[str, dict[str, Any]], named: str
) -> None:
    config = write_config(tmp_path / "bad.yaml", raw_config(tmp_path, **change))
    result = run_cli("check-config", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{config}: ")
    assert named in result.stderr
