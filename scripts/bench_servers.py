"""The processes of a benchmark run: servers (the daemon, the echo baseline) and the load
generator, whose results come back as bench_records types. Used by scripts/bench.py."""

import json
import os
import resource
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from bench_records import (
    MODES,
    Claims,
    Idle,
    Paced,
    Pipeline,
    Reads,
    Watch,
    Watchers,
    read_report,
)
from websockets.sync.client import connect

from fetchml.protocol.requests import ListExperiments, encode_request
from fetchml.protocol.responses import Data, decode_response

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/support: the daemon harness, config, experiments, keys

from tests.support.config import raw_config, updated  # noqa: E402
from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.experiments import commit_of, make_experiment, meta_bytes  # noqa: E402
from tests.support.keys import key_entry, key_hash  # noqa: E402

LOAD = ROOT / "scripts" / "bench_load.py"
ECHO = ROOT / "scripts" / "bench_echo.py"
TIMESTAMP = 1764000000
"""Record and experiment timestamp of everything pre-built."""
KEY = "fml_bench_only_not_a_secret"
KEY_HASH = key_hash(KEY)
"""What requests carry: the first 16 bytes of the key's SHA-256."""
MAX_CONNECTIONS = 12_000
LOAD_TIMEOUT_S = 600
MODE_OF = {kind: mode for mode, kind in MODES.items()}
R = TypeVar("R", Pipeline, Paced, Reads, Watch, Watchers, Idle, Claims)


@dataclass(frozen=True)
class Sizes:
    """How much load each figure gets: FULL, or QUICK for CI (--quick)."""

    single_messages: int  # LOG_METRIC frames, pipelined
    latency_seconds: float  # of paced LOG_METRIC at LATENCY_RATE, per server
    batch_messages: int  # LOG_METRICS frames of BATCH metrics, per server
    stream_seconds: float  # of STREAMS connections streaming at once
    read_records: int  # in each pre-built read experiment
    lttb_repeat: int  # LTTB queries timed (the median counts)
    watchers: int
    watch_seconds: float  # of the paced writer while watchers measure push latency
    ingest_seconds: float  # of max-speed ingest, with and without watchers
    idle_connections: int
    runs: int  # experiments with run documents, listed by LIST_RUNS
    worker_seconds: float  # of idle workers' claim loops while the daemon's CPU is measured
    worker_ramp_seconds: float  # of claim loops before that: the backoff's ramp to 10 s
    cluster_seconds: float  # of the paced writer while a watcher on a node measures pushes
    cluster_messages: int  # LOG_METRICS frames per connection in the cluster ingest runs


# -- processes ------------------------------------------------------------------------------


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server(DaemonProcess):
    """A daemon or baseline server process (the tests' harness), its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, is_daemon: bool) -> None:
        super().__init__(None, log, argv=argv, preexec_fn=raise_open_file_limit)
        self.name = name
        self.is_daemon = is_daemon
        try:
            self.start(timeout=60)
        except AssertionError as exc:
            raise RuntimeError(f"{name} did not start: {exc}") from None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
            return dict(json.load(r))

    def log_problems(self) -> list[str]:
        """Error lines and tracebacks the server wrote."""
        lines = self.log().splitlines()
        return [line for line in lines if " ERROR " in line or line.startswith("Traceback")]

    def log_warnings(self) -> list[str]:
        lines = self.log().splitlines()
        return [line for line in lines if " WARNING " in line]


def commit(label: str) -> str:
    """The 40-hex commit ID of a named experiment."""
    return commit_of(label)


def make_bench_experiment(base: Path, label: str, records: bytes = b"") -> None:
    """An experiment directory as the daemon (or fetch_ml) would leave it."""
    commit = commit_of(label)
    make_experiment(base, commit, records, meta_bytes(commit, user="bench", timestamp=TIMESTAMP))


def daemon_config(home: Path, durability: str) -> dict[str, Any]:
    """Defaults everywhere (1 MiB messages, no compression, no audit file) but these."""
    return raw_config(
        home,
        server={"max_connections": MAX_CONNECTIONS},
        storage={"durability": durability},
        auth={"api_keys": {"bench": key_entry(KEY, "admin")}},
        logging={"level": "info", "audit_file": ""},
    )


class Bench:
    """The servers of a run, the load generator, and what went wrong."""

    echo: Server
    write: Server
    fsync: Server
    """The baseline and the two daemons shared by most figures (bench.start_main_servers)."""

    def __init__(self, tmp: Path, sizes: Sizes) -> None:
        self.tmp = tmp
        self.sizes = sizes
        self.servers: list[Server] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}

    # servers

    def start_echo(self, name: str) -> Server:
        log = self.tmp / f"{name}.log"
        server = Server(name, [sys.executable, str(ECHO)], log, is_daemon=False)
        self.servers.append(server)
        return server

    def start_daemon(
        self,
        name: str,
        durability: str,
        experiments: dict[str, bytes],
        **sections: dict[str, Any],
    ) -> Server:
        """A daemon whose config is daemon_config updated by `sections`, its experiments
        made first (in its storage.base_path)."""
        home = self.tmp / name
        home.mkdir()
        raw = updated(daemon_config(home, durability), **sections)
        for label, records in experiments.items():
            make_bench_experiment(Path(raw["storage"]["base_path"]), label, records)
        config = home / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        argv = [sys.executable, "-m", "fetchml.server", "serve", "--config", str(config)]
        server = Server(name, argv, home / "daemon.log", is_daemon=True)
        self.servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        status = server.stop()
        if status != 0:
            self.errors.append(f"{server.name} exited with status {status}: {server.log_tail()}")
        self.errors.extend(f"{server.name} log: {line}" for line in server.log_problems())
        warnings = server.log_warnings()
        if warnings:
            self.notes.append(
                f"{server.name} logged {len(warnings)} warnings, first: {warnings[0]}"
            )
        self.servers.remove(server)

    def stop_all(self) -> None:
        for server in list(self.servers):
            self.stop(server)

    def check_alive(self, server: Server) -> None:
        if not server.running():
            status = server.proc.returncode if server.proc else None
            raise RuntimeError(f"{server.name} died (status {status})")

    # load generator

    def load_argv(self, mode: str, server: Server, options: dict[str, Any]) -> list[str]:
        """The load generator's command line: `server`'s URL unless options give `url`."""
        argv = [sys.executable, str(LOAD), mode, "--key", KEY]
        for name, value in {"url": server.url, **options}.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        return argv

    def load(self, kind: type[R], server: Server, **options: Any) -> R | None:
        """Run the load generator to the end; its result (None when it failed)."""
        done = subprocess.run(
            self.load_argv(MODE_OF[kind], server, options),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=LOAD_TIMEOUT_S,
        )
        return self.load_result(kind, server, done.returncode, done.stdout, done.stderr)

    def start_load(
        self, kind: type[Watchers | Idle | Claims], server: Server, **options: Any
    ) -> subprocess.Popen[str]:
        """Start a load generator that holds its connections until its stdin closes."""
        proc = subprocess.Popen(
            self.load_argv(MODE_OF[kind], server, options),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            self.errors.append(f"{MODE_OF[kind]} on {server.name} did not get ready: {line}")
        return proc

    def finish_load(self, proc: subprocess.Popen[str], kind: type[R], server: Server) -> R | None:
        """Close its stdin (it then lets go of its connections) and collect its result."""
        try:
            stdout, stderr = proc.communicate(timeout=LOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        return self.load_result(kind, server, proc.returncode, stdout, stderr)

    def load_result(
        self, kind: type[R], server: Server, status: int, stdout: str, stderr: str
    ) -> R | None:
        self.check_alive(server)
        where = f"{MODE_OF[kind]} on {server.name}"
        lines = stdout.strip().splitlines()
        if status != 0 or not lines:
            self.errors.append(f"{where} failed (status {status}): {stderr[-2000:]}")
            return None
        report = read_report(lines[-1])
        self.errors.extend(f"{where}: {text}" for text in report.errors)
        if report.result is not None and not isinstance(report.result, kind):
            self.errors.append(f"{where}: answered a {type(report.result).__name__}")
        return report.result if isinstance(report.result, kind) else None

    # checks

    def verify(self, server: Server, expected: dict[str, int]) -> None:
        """Each experiment must hold exactly the records acknowledged (LIST_EXPERIMENTS)."""
        counts = self.experiment_counts(server)
        for label, count in expected.items():
            held = counts.get(commit(label))
            if held != count:
                self.errors.append(
                    f"{server.name}: experiment {label} holds {held} records, "
                    f"{count} were acknowledged"
                )

    def experiment_counts(self, server: Server) -> dict[str, int]:
        with connect(server.url, compression=None, proxy=None, max_size=None) as ws:
            ws.send(encode_request(ListExperiments(key_hash=KEY_HASH)))
            message = ws.recv()
        response = decode_response(message) if isinstance(message, bytes) else message
        if not isinstance(response, Data):
            self.errors.append(f"{server.name}: LIST_EXPERIMENTS answered {response}")
            return {}
        return {row["commit_id"]: row["metrics_count"] for row in json.loads(response.payload)}
