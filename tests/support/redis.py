"""A real redis-server (Debian's; .ci/run installs it) on a free port, no persistence,
for cluster tests: `RedisServer(dir).start()`, `.url`, `.kill()` (SIGKILL), `.start()`
again on the same port, `.stop()`."""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .daemon import free_port

READY_S = 10.0


class RedisServer:
    def __init__(
        self, home: Path, password: str = "", tls: tuple[Path, Path] | None = None
    ) -> None:
        """`tls`: (certificate, key): TLS only, on the port; the URL is rediss:// trusting
        that certificate."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self.binary = binary
        self.home = home
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port", "0" if self.tls else str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.home),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls:
            cert, key = (str(p) for p in self.tls)
            argv += ["--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key]
            argv += ["--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
        with (self.home / "redis.log").open("ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"redis-server exited: {self.log_tail()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"redis-server not ready after {READY_S} s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: Redis is gone at once, as on a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        path = self.home / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
