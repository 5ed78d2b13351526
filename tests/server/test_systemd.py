"""Notifier against a real AF_UNIX datagram socket standing in for systemd."""

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from fetchml.server.systemd import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready() is True
    assert recv(sock) == "READY=1"
    assert notifier.ready("listening on ws://127.0.0.1:9103/ws") is True
    assert recv(sock) == "READY=1\nSTATUS=listening on ws://127.0.0.1:9103/ws"


def test_reloading_carries_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv(sock).split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_stopping_status_and_raw_fields(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.stopping() is True
    assert recv(sock) == "STOPPING=1"
    assert notifier.status("draining 3 connections") is True
    assert recv(sock) == "STATUS=draining 3 connections"
    assert notifier.status("two\nlines") is True
    assert recv(sock) == "STATUS=two lines"
    assert notifier.notify("ERRNO=5", "EXTEND_TIMEOUT_USEC=1000") is True
    assert recv(sock) == "ERRNO=5\nEXTEND_TIMEOUT_USEC=1000"


def test_abstract_socket() -> None:
    name = f"fetchml-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready("up") is True
        assert recv(sock) == "READY=1\nSTATUS=up"
        assert notifier.stopping() is True
        assert recv(sock) == "STOPPING=1"


def test_no_socket_is_a_quiet_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False
    assert notifier.notify("WATCHDOG=1") is False


def test_default_env_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().ready() is False


@pytest.mark.parametrize("value", ["", "relative/path.sock", "vsock:2:1234"])
def test_unusable_address_is_a_no_op(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_missing_socket_path_returns_false(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.stopping() is False


def test_missing_abstract_socket_returns_false() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": f"@fetchml-nobody-{uuid.uuid4().hex}"})
    assert notifier.ready() is False


def test_socket_that_stopped_listening_returns_false(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready() is False  # ECONNREFUSED: the file is there, nobody reads


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_interval() == expected


async def test_watchdog_loop_pings_repeatedly(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "40000"})
        assert notifier.watchdog_interval() == 0.02
        loop = asyncio.get_running_loop()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(notifier.watchdog_loop)
                pings = [(await loop.sock_recv(sock, 4096)).decode() for _ in range(2)]
                tg.cancel_scope.cancel()
        assert pings == ["WATCHDOG=1", "WATCHDOG=1"]


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NOTIFY_SOCKET": "/nonexistent/notify.sock"},
        {"WATCHDOG_USEC": "40000"},
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "40000", "WATCHDOG_PID": str(os.getpid() + 1)},
    ],
)
async def test_watchdog_loop_returns_when_not_configured(env: dict[str, str]) -> None:
    with anyio.fail_after(5):
        await Notifier(env).watchdog_loop()


def test_send_does_not_block_when_receiver_is_full(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        results = [notifier.status("x" * 1000) for _ in range(10_000)]
        assert results[0] is True
        assert results[-1] is False  # queue full: EAGAIN, dropped, not blocked
