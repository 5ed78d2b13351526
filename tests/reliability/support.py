"""Helpers of the reliability suite: daemon processes, config files, experiment trees on disk.

Daemon processes come from tests/integration/proc.py. Every wait polls with a
bounded deadline; nothing sleeps to synchronize.
"""

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.metrics import MetricRecord, decode_metrics_payload, encode_record
from fetchml.protocol.records import Metadata, encode_metadata
from fetchml.protocol.requests import QueryMetrics, Request
from fetchml.protocol.responses import Data, Error
from tests.conftest import RawClient, hash_of
from tests.integration.proc import (
    DaemonProcess,
)

ADMIN = hash_of("admin")
STAMP = 1795735109
"""A plausible record timestamp for records the tests write themselves."""


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
