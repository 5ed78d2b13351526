"""Helpers of the reliability suite: daemon processes, config files, experiment trees on disk.

`DaemonProcess` runs `python -m server serve --config FILE` with this checkout on
PYTHONPATH and its stderr in a log file. Every wait polls with a bounded deadline;
nothing sleeps to synchronize.
"""

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from websockets.asyncio.client import connect

from protocol.enums import ErrorCode
from protocol.records import Metadata, MetricRecord, encode_metadata, encode_record
from protocol.requests import QueryMetrics, Request
from protocol.responses import Data, Error, decode_metrics_payload
from tests.conftest import KEYS, RawClient, hash_of

ROOT = Path(__file__).resolve().parents[2]
ADMIN = hash_of("admin")
LISTENING = re.compile(r"listening on ws://[0-9.]+:(\d+)/ws")
DEADLINE_S = 30.0
STAMP = 1795735109
"""A plausible record timestamp for records the tests write themselves."""


async def poll(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    """Wait until `condition()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.002)


# -- config files -----------------------------------------------------------------------


def raw_config(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """conftest's KEYS, 127.0.0.1 port 0, data, jobs db and audit log under tmp_path."""
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "storage": {
            "base_path": str(tmp_path / "experiments"),
            "jobs_db": str(tmp_path / "jobs.sqlite3"),
        },
        "auth": {
            "api_keys": {
                user: {"hash": hashlib.sha256(key.encode()).hexdigest(), "role": role}
                for user, (role, key) in KEYS.items()
            },
            "roles": {"root": {"permissions": ["*"], "scope": "all"}},
        },
        "logging": {"audit_file": str(tmp_path / "audit.jsonl")},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- daemon processes -----------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


class DaemonProcess:
    """`python -m server serve` in a subprocess; stdout and stderr go to `log_path`."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--config", str(config)],
                cwd=ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        assert self.port, "daemon not ready"
        return f"ws://127.0.0.1:{self.port}/ws"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    async def wait_ready(self, timeout: float = DEADLINE_S) -> "DaemonProcess":
        """Wait for the `listening on` line and take the real port from it."""
        deadline = time.monotonic() + timeout
        while True:
            match = LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon not ready after {timeout:.0f} s:\n{self.log()}")
            await asyncio.sleep(0.005)

    async def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        await poll(lambda: self.proc.poll() is not None, "the daemon to exit", timeout)
        assert self.proc.returncode is not None
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE_S)

    async def stop(self) -> None:
        """SIGTERM; the daemon must exit 0."""
        self.proc.send_signal(signal.SIGTERM)
        assert await self.wait_exit() == 0, self.log()

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE_S)

    async def client(self, **kwargs: Any) -> RawClient:
        ws = await connect(self.url, compression=None, max_size=None, **kwargs)
        return RawClient(ws)


@contextlib.contextmanager
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemon processes (`start(config)`); any still running at the end is killed."""
    started: list[DaemonProcess] = []

    def start(config: Path) -> DaemonProcess:
        proc = DaemonProcess(config, tmp_path / f"daemon-{len(started)}.log")
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.reap()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m server ARGS...` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=_child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- experiment trees written by the test ---------------------------------------------------


def record(step: int, name: str = "loss", value: float = 1.0, timestamp: int = STAMP) -> bytes:
    return encode_record(timestamp, step, value, name.encode())


def meta_bytes(commit: str, user: str = "admin", timestamp: int = 1764000000) -> bytes:
    return encode_metadata(
        Metadata(commit_id=commit, timestamp=timestamp, job_name="job", user=user)
    )


def make_experiment(
    base: Path, commit: str, metrics: bytes | None = None, meta: bytes | None = None
) -> Path:
    """An experiment directory as the Go manager leaves it; returns its metrics.bin path."""
    directory = base / commit
    (directory / "files").mkdir(mode=0o750, parents=True)
    (directory / "meta.bin").write_bytes(meta_bytes(commit) if meta is None else meta)
    path = directory / "metrics.bin"
    if metrics is not None:
        path.write_bytes(metrics)
    return path


def torn_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.torn-*"))


# -- protocol helpers -------------------------------------------------------------------------


def keys(records: list[MetricRecord]) -> list[tuple[str, int]]:
    return [(r.name, r.step) for r in records]


async def query_all(client: RawClient, commit: bytes, key: bytes = ADMIN) -> list[MetricRecord]:
    """Every record of the valid prefix, following QUERY_METRICS pages."""
    out: list[MetricRecord] = []
    after = 0
    while True:
        response = await client.call(QueryMetrics(key_hash=key, commit_id=commit, after=after))
        assert isinstance(response, Data), response
        page = decode_metrics_payload(response.payload)
        out += page.records
        if page.next == 0:
            return out
        after = page.next


async def call_json(client: RawClient, request: Request) -> Any:
    response = await client.call(request)
    assert isinstance(response, Data), response
    return json.loads(response.payload)


async def expect_error(
    client: RawClient, request: Request, code: ErrorCode, message: str | None = None
) -> Error:
    response = await client.call(request)
    assert isinstance(response, Error), response
    assert response.code == code, response
    if message is not None:
        assert response.message == message, response
    return response


# -- mounts (root only) -------------------------------------------------------------------------


def _run(*argv: str) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0
    except OSError:  # no such command
        return False


def mount_tmpfs(directory: Path, size: str) -> bool:
    """A tiny filesystem to fill up; False when this machine does not allow mounting."""
    return _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(directory))


def unmount(directory: Path) -> None:
    if not _run("umount", str(directory)):
        _run("umount", "-l", str(directory))


def bind_readonly(directory: Path) -> bool:
    """Make `directory` read-only for everyone, root included (a read-only bind mount)."""
    if not _run("mount", "--bind", str(directory), str(directory)):
        return False
    if not _run("mount", "-o", "remount,bind,ro", str(directory)):
        unmount(directory)
        return False
    try:
        (directory / ".probe").touch()
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return True
    else:
        (directory / ".probe").unlink()
    unmount(directory)
    return False


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no block left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler
