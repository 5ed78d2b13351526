"""The daemon-process harness of the tests and the benchmark scripts.

`DaemonProcess` runs `python -m fetchml.server serve --config FILE` (or any server
that logs `listening on ws://HOST:PORT/ws` when ready) with this checkout on
PYTHONPATH; its stdout and stderr go to a log file. It starts, stops with any
signal, is killed with SIGKILL and starts again on the same config (a fixed port in
the config keeps its URL). Waiting is polling with a bounded deadline, never a bare
sleep; both a blocking and an asyncio form of each wait exist.
"""

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from .config import raw_config, updated, write_config
from .wire import RawClient

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on ws://([^\s/]+):(\d+)/ws")
DEADLINE_S = 30.0
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""Never inherited: a test under systemd must not have its daemons notify systemd."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def poll(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    """Wait until `condition()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


class DaemonProcess:
    """A server in a subprocess, its output in `log`; not started until `spawn`/`start`.

    Each start appends to the log and looks for the listening line only in what that
    start wrote; `port` is the one it logged (so a config with port 0 works too).
    `spawn` and the waits are separate, so a start that must fail can be watched.
    """

    def __init__(
        self,
        config: Path | None,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        argv: list[str] | None = None,
        data: Path | None = None,
        port: int = 0,
        preexec_fn: Callable[[], Any] | None = None,
        measured: bool = True,
    ) -> None:
        """`measured=False` keeps coverage out of the daemon (for tests that time it)."""
        if argv is None:
            assert config is not None, "a config file or an argv"
            argv = [sys.executable, "-m", "fetchml.server", "serve", "--config", str(config)]
        self.argv = argv
        self.config = config
        self.log_path = log
        self._data = data
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in SYSTEMD_ENV and (measured or not k.startswith("COVERAGE_"))
        }
        self.env["PYTHONPATH"] = str(ROOT)
        self.env.update(env or {})
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None
        self.fixed_port = port
        """The port of the config, when fixed: `url` is known before the first start."""
        self.port = port
        self.starts = 0
        self._log_from = 0
        log.write_bytes(b"")

    # -- starting ---------------------------------------------------------------------------

    def spawn(self) -> "DaemonProcess":
        """Start the process and return at once (see `ready` / `wait_ready`)."""
        assert not self.running(), "already running"
        self._log_from = self.log_path.stat().st_size
        self.port = self.fixed_port
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec_fn,
            )
        self.starts += 1
        return self

    def start(self, timeout: float = 60.0) -> "DaemonProcess":
        """Spawn and block until it listens."""
        return self.spawn().ready(timeout)

    def _is_ready(self) -> bool:
        with self.log_path.open("rb") as f:
            f.seek(self._log_from)
            match = LISTENING.search(f.read().decode(errors="replace"))
        if match:
            self.port = int(match.group(2))
            return True
        assert self.proc is not None, "not started"
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        return False

    def _not_ready(self, timeout: float) -> AssertionError:
        self.reap()
        return AssertionError(f"daemon not ready after {timeout:.0f} s:\n{self.log()}")

    def ready(self, timeout: float = DEADLINE_S) -> "DaemonProcess":
        """Block until the listening line (killing it and failing after `timeout`)."""
        deadline = time.monotonic() + timeout
        while not self._is_ready():
            if time.monotonic() > deadline:
                raise self._not_ready(timeout)
            time.sleep(0.02)
        return self

    async def wait_ready(self, timeout: float = DEADLINE_S) -> "DaemonProcess":
        """`ready` without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while not self._is_ready():
            if time.monotonic() > deadline:
                raise self._not_ready(timeout)
            await asyncio.sleep(0.02)
        return self

    # -- state, log, clients ----------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def url(self) -> str:
        assert self.port, "daemon not ready"
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def data(self) -> Path:
        """The data directory (base_path), when the builder knows it."""
        assert self._data is not None, "this daemon's data directory is not known"
        return self._data

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything every start wrote."""
        return self.log_path.read_text(errors="replace")

    async def client(self, **kwargs: Any) -> RawClient:
        ws = await connect(self.url, compression=None, max_size=None, **kwargs)
        return RawClient(ws)

    # -- signals and stopping ---------------------------------------------------------------

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(signum)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal it (if still running) and block until it exits: its exit status, or -9
        when it did not exit within `timeout` and had to be killed."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def kill(self) -> int:
        """kill -9, and wait for it to be gone: its exit status (-9 unless it had exited)."""
        return self.stop(signal.SIGKILL)

    async def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        await poll(lambda: not self.running(), "the daemon to exit", timeout)
        assert self.proc is not None and self.proc.returncode is not None
        return self.proc.returncode

    async def shutdown(self) -> None:
        """SIGTERM without blocking the event loop; the daemon must exit 0."""
        self.send_signal(signal.SIGTERM)
        assert await self.wait_exit() == 0, self.log()

    def reap(self) -> None:
        """Kill it if it still runs (cleanup after a failure)."""
        if self.running():
            self.kill()

    def close(self) -> None:
        """Stop it gracefully if it still runs (cleanup after success)."""
        if self.running():
            self.stop()


def daemon_at(home: Path, **sections: dict[str, Any]) -> DaemonProcess:
    """A daemon on a port chosen now (restarts keep the URL), not yet started: config,
    data directory and log under `home`. Control requests are not rate limited."""
    port = free_port()
    raw = raw_config(
        home,
        server={"port": port, "shutdown_timeout_s": 5},
        rate_limit={"control_requests_per_minute": 1_000_000},
        logging={"level": "info"},
    )
    config = write_config(home / "config.yaml", updated(raw, **sections))
    return DaemonProcess(config, home / "daemon.log", data=home / "experiments", port=port)


@contextlib.contextmanager
def daemons(directory: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """`start(config, env=None, measured=True)` spawns a daemon (logging under `directory`); any still
    running at the end is killed."""
    started: list[DaemonProcess] = []

    def start(
        config: Path, env: dict[str, str] | None = None, *, measured: bool = True
    ) -> DaemonProcess:
        proc = DaemonProcess(
            config, directory / f"daemon-{len(started)}.log", env, measured=measured
        )
        started.append(proc)
        return proc.spawn()

    try:
        yield start
    finally:
        for proc in started:
            proc.reap()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m fetchml.server ARGS...` to completion, output captured."""
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
