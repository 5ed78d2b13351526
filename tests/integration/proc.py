"""Helpers for the integration tests: a daemon in a subprocess, and metrics.bin as records.

`DaemonProcess` runs `python -m server serve --config FILE` with this checkout on
PYTHONPATH, sends it real signals and reads its stderr from a file. Waiting is
always polling with a bounded deadline, never a bare sleep.
"""

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from websockets.asyncio.client import connect

from fetchml.protocol.metrics import MetricRecord, decode_records, scan
from tests.conftest import KEYS, RawClient

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on ws://([0-9.]+):(\d+)/ws")
DEADLINE_S = 30.0


async def poll(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    """Wait until `condition()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


# -- metrics.bin -------------------------------------------------------------------


def file_records(path: Path) -> list[MetricRecord]:
    """The records of a metrics file's valid prefix (none when there is no file)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return decode_records(data[: scan(data).end])


def valid_prefix_end(path: Path) -> int:
    return scan(path.read_bytes()).end


def metrics_path(base: Path, commit: bytes) -> Path:
    return base / commit.hex() / "metrics.bin"


# -- config files ------------------------------------------------------------------


def key_entry(raw_key: str, role: str) -> dict[str, str]:
    return {"hash": hashlib.sha256(raw_key.encode()).hexdigest(), "role": role}


def raw_config(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A YAML-ready config with conftest's KEYS, port 0 and everything under tmp_path."""
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "storage": {
            "base_path": str(tmp_path / "experiments"),
            "jobs_db": str(tmp_path / "jobs.sqlite3"),
        },
        "auth": {
            "api_keys": {user: key_entry(key, role) for user, (role, key) in KEYS.items()},
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


# -- the daemon process --------------------------------------------------------------


class DaemonProcess:
    """`python -m server serve` in a subprocess; stderr (and stdout) go to a log file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        full_env["PYTHONPATH"] = str(ROOT)
        full_env.update(env or {})
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fetchml.server", "serve", "--config", str(config)],
                cwd=ROOT,
                env=full_env,
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

    async def wait_ready(self, timeout: float = DEADLINE_S) -> "DaemonProcess":
        """Wait for the `listening on` line; its port is the real one (config port 0)."""
        deadline = time.monotonic() + timeout
        while True:
            match = LISTENING.search(self.log())
            if match:
                self.port = int(match.group(2))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon not ready after {timeout:.0f} s:\n{self.log()}")
            await asyncio.sleep(0.02)

    async def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        await poll(lambda: self.proc.poll() is not None, "the daemon to exit", timeout)
        assert self.proc.returncode is not None
        return self.proc.returncode

    def send_signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE_S)

    async def stop(self) -> None:
        """SIGTERM; the daemon must exit 0."""
        self.proc.send_signal(signal.SIGTERM)
        assert await self.wait_exit() == 0, self.log()

    def reap(self) -> None:
        """Kill it if it still runs (test cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    async def client(self, **kwargs: Any) -> RawClient:
        ws = await connect(self.url, compression=None, max_size=None, **kwargs)
        return RawClient(ws)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m server ARGS...` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "fetchml.server", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
