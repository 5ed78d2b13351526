"""Client test fixtures: the daemon as a subprocess on a fixed free port (for restarts)."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEYS

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = KEYS["admin"][1]
ALICE_KEY = KEYS["alice"][1]
BOB_KEY = KEYS["bob"][1]
ANALYST_KEY = KEYS["ana"][1]
WORKER_KEY = KEYS["wendy"][1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def commit_of(label: str) -> str:
    """A deterministic 40-hex commit per test label."""
    return hashlib.sha1(label.encode()).hexdigest()


class ServerProcess:
    """`python -m server serve --config FILE` on a port chosen once, so restarts keep it."""

    def __init__(self, base: Path, **sections: dict[str, Any]) -> None:
        self.base = base
        self.port = free_port()
        self.data = base / "experiments"
        self.config_path = base / "config.yaml"
        raw: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port, "shutdown_timeout_s": 5},
            "storage": {"base_path": str(self.data), "jobs_db": str(base / "jobs.sqlite3")},
            "auth": {
                "api_keys": {
                    user: {"hash": hashlib.sha256(key.encode()).hexdigest(), "role": role}
                    for user, (role, key) in KEYS.items()
                },
                "roles": {"root": {"permissions": ["*"], "scope": "all"}},
            },
            "rate_limit": {"control_requests_per_minute": 1_000_000},
            "logging": {"level": "info"},
        }
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        self.config_path.write_text(json.dumps(raw, indent=1))  # JSON is YAML
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        self.starts = 0
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._release()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fetchml.server", "serve", "--config", str(self.config_path)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, args=(self.proc, ready), daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("daemon did not start:\n" + "\n".join(self.log[-30:]))
        self.starts += 1

    def _drain(self, proc: "subprocess.Popen[bytes]", ready: threading.Event) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if "listening on ws://" in line:
                ready.set()
        ready.set()  # exited: start() sees poll() is not None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the daemon and wait for it to exit; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def _release(self) -> None:
        """After an exit: let the reader reach EOF, then close the pipe."""
        if self._reader is not None:
            self._reader.join(30)
            self._reader = None
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGTERM)
        self._release()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A daemon subprocess, not started: call .start(), .kill(), .start() again..."""
    proc = ServerProcess(tmp_path)
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One running daemon subprocess shared by a module's tests (use distinct commits)."""
    proc = ServerProcess(tmp_path_factory.mktemp("daemon"))
    proc.start()
    yield proc
    proc.close()
