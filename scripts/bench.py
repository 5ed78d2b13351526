"""Benchmark of the fetchml daemon, each figure next to a baseline measured in the same run.

Everything runs in separate processes on 127.0.0.1: the daemon (`python -m
server serve`, one per durability), the baseline server (scripts/bench_echo.py:
a bare websockets server answering every message with 10 bytes) and the load
generator (scripts/bench_load.py), which drives both the same way with the same
pre-encoded frames. The read baselines run in this process on the same
metrics.bin. Prints a table (ratio = fetchml figure / baseline figure, target,
PASS or MISS) and writes it as JSON.

Exits non-zero only when the daemon misbehaves: an ERROR response, a refused or
dropped connection, a crash, an error in its log, or an experiment that does not
hold exactly the records acknowledged. Speed never changes the exit status.

    scripts/bench [--quick] [--json bench-results.json] [--dir DIR]
"""

import argparse
import hashlib
import json
import math
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import websockets
import yaml
from websockets.sync.client import connect

from fetchml.protocol.metrics import encode_record, iter_records
from fetchml.protocol.records import Metadata, encode_metadata
from fetchml.protocol.requests import ListExperiments, encode_request
from fetchml.protocol.responses import Data, decode_response

ROOT = Path(__file__).resolve().parent.parent
LOAD = ROOT / "scripts" / "bench_load.py"
ECHO = ROOT / "scripts" / "bench_echo.py"
KEY = "fml_bench_only_not_a_secret"
KEY_SHA256 = hashlib.sha256(KEY.encode())
KEY_HASH = KEY_SHA256.digest()[:16]
"""What requests carry: the first 16 bytes of the key's SHA-256."""
TIMESTAMP = 1764000000
"""Record and experiment timestamp of everything pre-built."""

LATENCY_RATE = 10_000
"""LOG_METRIC messages per second in the ack-latency runs."""
BATCH = 1_000
STREAM_BATCH = 100
"""Metrics per LOG_METRICS in the 100-connection, watch and watcher-cost runs."""
STREAMS = 100
SINGLE_WINDOW = 1_000
BATCH_WINDOW = 100
STREAM_WINDOW = 16
"""Unanswered requests per connection in the pipelined runs (single, batched, streams)."""
WATCH_RATE = 50
"""LOG_METRICS messages per second while watchers measure push latency."""
WATCH_HISTORY = 10_000
"""Records already in a watched experiment: watchers start at this index."""
LTTB_POINTS = 1_000
MAX_CONNECTIONS = 12_000
IDLE_SETTLE_S = 1.0
LOAD_TIMEOUT_S = 600
READ_NAMES = [
    "loss",
    "accuracy",
    "learning_rate",
    "grad_norm",
    "val_loss",
    "val_accuracy",
    "epoch",
    "throughput",
    "gpu_util",
    "memory_gb",
]
LISTENING = re.compile(r"listening on ws://[^\s/]+:(\d+)/ws")


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


FULL = Sizes(
    single_messages=200_000,
    latency_seconds=5,
    batch_messages=2_000,
    stream_seconds=5,
    read_records=1_000_000,
    lttb_repeat=3,
    watchers=100,
    watch_seconds=5,
    ingest_seconds=3,
    idle_connections=10_000,
)
QUICK = Sizes(
    single_messages=20_000,
    latency_seconds=1,
    batch_messages=200,
    stream_seconds=1,
    read_records=200_000,
    lttb_repeat=1,
    watchers=20,
    watch_seconds=1,
    ingest_seconds=1,
    idle_connections=1_000,
)


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    at_least: bool
    """True: the figure must be >= limit; False: <= limit."""
    limit: float
    of_ratio: bool = False
    """The limit applies to the ratio to the baseline, not to the figure itself."""

    def met(self, measured: float) -> bool:
        return measured >= self.limit if self.at_least else measured <= self.limit

    def text(self, unit: str) -> str:
        sign = ">=" if self.at_least else "<="
        if self.of_ratio:
            return f"{sign} {self.limit:.2f}x"
        return f"{sign} {fmt(self.limit, unit)}"


@dataclass
class Row:
    figure: str
    unit: str
    value: float | None
    baseline: float | None
    baseline_name: str
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def status(self) -> str:
        if self.target is None:
            return ""
        measured = self.ratio if self.target.of_ratio else self.value
        if measured is None:
            return "n/a"
        return "PASS" if self.target.met(measured) else "MISS"

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "unit": self.unit,
            "value": self.value,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "target": self.target.text(self.unit) if self.target else None,
            "status": self.status or None,
        }


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("ms", "min/max"):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


# -- processes ------------------------------------------------------------------------------


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    """A daemon or baseline server process, its stderr in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, is_daemon: bool) -> None:
        self.name = name
        self.log = log
        self.is_daemon = is_daemon
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
                preexec_fn=raise_open_file_limit,
            )
        self.port = self._wait_for_port(timeout=60)
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log.read_text(errors="replace"))
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
            return dict(json.load(r))

    def stop(self) -> int:
        """SIGTERM and wait; the exit status (-9 when it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode

    def log_problems(self) -> list[str]:
        """Error lines and tracebacks the server wrote."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if " ERROR " in line or line.startswith("Traceback")]

    def log_warnings(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if " WARNING " in line]


def commit(label: str) -> str:
    """The 40-hex commit ID of a named experiment."""
    return hashlib.sha1(label.encode()).hexdigest()


def make_experiment(base: Path, label: str, records: bytes = b"") -> None:
    """An experiment directory as the daemon (or fetch_ml) would leave it."""
    path = base / commit(label)
    (path / "files").mkdir(mode=0o750, parents=True)
    meta = Metadata(commit_id=commit(label), timestamp=TIMESTAMP, job_name=label, user="bench")
    (path / "meta.bin").write_bytes(encode_metadata(meta))
    (path / "metrics.bin").write_bytes(records)


def many_names_records(count: int) -> bytes:
    """`count` records cycling through READ_NAMES, ten per step."""
    names = [n.encode() for n in READ_NAMES]
    return b"".join(
        encode_record(TIMESTAMP + i // 1000, i // 10, math.sin(i), names[i % 10])
        for i in range(count)
    )


def one_series_records(count: int) -> bytes:
    """`count` points of one noisy, falling "loss" curve, one per step."""
    return b"".join(
        encode_record(TIMESTAMP + i // 1000, i, 1 / (1 + i / 1000) + 0.05 * math.sin(i), b"loss")
        for i in range(count)
    )


def daemon_config(home: Path, durability: str) -> dict[str, Any]:
    """Defaults everywhere (1 MiB messages, no compression) but these."""
    return {
        "server": {"host": "127.0.0.1", "port": 0, "max_connections": MAX_CONNECTIONS},
        "storage": {
            "base_path": str(home / "experiments"),
            "jobs_db": str(home / "jobs.sqlite3"),
            "durability": durability,
        },
        "auth": {"api_keys": {"bench": {"hash": KEY_SHA256.hexdigest(), "role": "admin"}}},
        "logging": {"level": "info"},
    }


class Bench:
    """The servers of a run, the load generator, and what went wrong."""

    echo: Server
    write: Server
    fsync: Server
    """The baseline and the two daemons shared by most figures (start_main_servers)."""

    def __init__(self, tmp: Path, sizes: Sizes) -> None:
        self.tmp = tmp
        self.sizes = sizes
        self.servers: list[Server] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}

    # servers

    def start_main_servers(self) -> None:
        self.echo = self.start_echo("echo")
        self.write = self.start_daemon("write", "write", write_daemon_experiments(self.sizes))
        self.fsync = self.start_daemon("fsync", "fsync", {"latency": b"", "batch": b""})

    def start_echo(self, name: str) -> Server:
        log = self.tmp / f"{name}.log"
        server = Server(name, [sys.executable, str(ECHO)], log, is_daemon=False)
        self.servers.append(server)
        return server

    def start_daemon(self, name: str, durability: str, experiments: dict[str, bytes]) -> Server:
        home = self.tmp / name
        home.mkdir()
        for label, records in experiments.items():
            make_experiment(home / "experiments", label, records)
        config = home / "config.yaml"
        config.write_text(yaml.safe_dump(daemon_config(home, durability)))
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
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} died (status {server.proc.returncode})")

    # load generator

    def load_argv(self, mode: str, server: Server, options: dict[str, Any]) -> list[str]:
        argv = [sys.executable, str(LOAD), mode, "--url", server.url, "--key", KEY]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        return argv

    def load(self, mode: str, server: Server, **options: Any) -> dict[str, Any]:
        """Run the load generator to the end; its JSON result."""
        done = subprocess.run(
            self.load_argv(mode, server, options),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=LOAD_TIMEOUT_S,
        )
        return self.load_result(mode, server, done.returncode, done.stdout, done.stderr)

    def start_load(self, mode: str, server: Server, **options: Any) -> subprocess.Popen[str]:
        """Start a load generator that holds its connections until its stdin closes."""
        proc = subprocess.Popen(
            self.load_argv(mode, server, options),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            self.errors.append(f"{mode} on {server.name} did not get ready: {line}")
        return proc

    def finish_load(self, proc: subprocess.Popen[str], mode: str, server: Server) -> dict[str, Any]:
        """Close its stdin (it then lets go of its connections) and collect its result."""
        try:
            stdout, stderr = proc.communicate(timeout=LOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        return self.load_result(mode, server, proc.returncode, stdout, stderr)

    def load_result(
        self, mode: str, server: Server, status: int, stdout: str, stderr: str
    ) -> dict[str, Any]:
        self.check_alive(server)
        lines = stdout.strip().splitlines()
        if status != 0 or not lines:
            self.errors.append(
                f"{mode} on {server.name} failed (status {status}): {stderr[-2000:]}"
            )
            return {}
        result: dict[str, Any] = json.loads(lines[-1])
        self.errors.extend(f"{mode} on {server.name}: {text}" for text in result["errors"])
        return result

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


# -- rates from load results -------------------------------------------------------------------


def messages_per_second(result: dict[str, Any]) -> float | None:
    """Successful messages over the whole run, all connections together."""
    streams = result.get("streams")
    if not streams:
        return None
    seconds = max(s["seconds"] for s in streams)
    return sum(s["ok"] for s in streams) / seconds if seconds else None


def metrics_per_second(result: dict[str, Any]) -> float | None:
    rate = messages_per_second(result)
    return None if rate is None else rate * result["per_message"]


def fairness(result: dict[str, Any]) -> float | None:
    """Slowest over fastest connection, in messages per second."""
    rates = [s["ok"] / s["seconds"] for s in result.get("streams", []) if s["seconds"]]
    return min(rates) / max(rates) if rates else None


def acked(result: dict[str, Any], stream: int = 0) -> int:
    """Metrics acknowledged on one connection of a pipeline run."""
    streams = result.get("streams", [])
    return streams[stream]["ok"] * result["per_message"] if streams else 0


def latency(result: dict[str, Any], key: str, percentile: str) -> float | None:
    value = result.get(key, {}).get(percentile)
    return None if value is None else float(value)


# -- figures: ingest -----------------------------------------------------------------------------


def single_metric_ingest(b: Bench) -> list[Row]:
    """LOG_METRIC, one metric per message, pipelined on one connection."""
    options = dict(
        commits=commit("single"),
        per_message=1,
        messages=b.sizes.single_messages,
        window=SINGLE_WINDOW,
    )
    echo = b.load("pipeline", b.echo, **options)
    daemon = b.load("pipeline", b.write, **options)
    b.verify(b.write, {"single": acked(daemon)})
    b.details["single_metric"] = {"echo": echo, "write": daemon}
    return [
        Row(
            f"LOG_METRIC, 1 metric/msg, {SINGLE_WINDOW} in flight",
            "msg/s",
            messages_per_second(daemon),
            messages_per_second(echo),
            "echo",
            Target(at_least=True, limit=0.7, of_ratio=True),
        )
    ]


def ack_latency(b: Bench) -> list[Row]:
    """LOG_METRIC request-to-ack latency at a fixed rate, durability write and fsync."""
    options = dict(
        commits=commit("latency"),
        per_message=1,
        rate=LATENCY_RATE,
        seconds=b.sizes.latency_seconds,
    )
    echo = b.load("paced", b.echo, **options)
    b.details["ack_latency"] = {"echo": echo}
    rows = []
    for server, p99_limit in ((b.write, 5.0), (b.fsync, 25.0)):
        daemon = b.load("paced", server, **options)
        b.verify(server, {"latency": daemon.get("ok", 0)})
        b.details["ack_latency"][server.name] = daemon
        p99_target = Target(at_least=False, limit=p99_limit)
        for percentile, target in (("p50", None), ("p99", p99_target)):
            rows.append(
                Row(
                    f"LOG_METRIC ack {percentile} at {LATENCY_RATE:,}/s, {server.name}",
                    "ms",
                    latency(daemon, "latency_ms", percentile),
                    latency(echo, "latency_ms", percentile),
                    "echo",
                    target,
                )
            )
    return rows


def batched_ingest(b: Bench) -> list[Row]:
    """LOG_METRICS of 1,000 metrics, pipelined on one connection, write and fsync."""
    options = dict(
        commits=commit("batch"),
        per_message=BATCH,
        messages=b.sizes.batch_messages,
        window=BATCH_WINDOW,
    )
    echo = b.load("pipeline", b.echo, **options)
    b.details["batched"] = {"echo": echo}
    rows = []
    for server, limit in ((b.write, 1_000_000), (b.fsync, 500_000)):
        daemon = b.load("pipeline", server, **options)
        b.verify(server, {"batch": acked(daemon)})
        b.details["batched"][server.name] = daemon
        rows.append(
            Row(
                f"LOG_METRICS, {BATCH:,} metrics/msg, {server.name}",
                "metrics/s",
                metrics_per_second(daemon),
                metrics_per_second(echo),
                "echo, same frames",
                Target(at_least=True, limit=limit),
            )
        )
    return rows


def many_connections(b: Bench) -> list[Row]:
    """STREAMS connections streaming LOG_METRICS at once, one experiment each."""
    labels = [f"stream-{i}" for i in range(STREAMS)]
    options = dict(
        commits=",".join(commit(label) for label in labels),
        per_message=STREAM_BATCH,
        seconds=b.sizes.stream_seconds,
        window=STREAM_WINDOW,
        distinct_frames=10,
    )
    echo = b.load("pipeline", b.echo, **options)
    daemon = b.load("pipeline", b.write, **options)
    b.verify(b.write, {label: acked(daemon, i) for i, label in enumerate(labels)})
    b.details["many_connections"] = {"echo": echo, "write": daemon}
    name = f"{STREAMS} connections x LOG_METRICS {STREAM_BATCH}"
    return [
        Row(name, "metrics/s", metrics_per_second(daemon), metrics_per_second(echo), "echo"),
        Row(f"{name}: fairness", "min/max", fairness(daemon), fairness(echo), "echo"),
    ]


# -- figures: reads -----------------------------------------------------------------------------


def plain_read(path: Path) -> list[Any]:
    """The read baseline: plain file read, then protocol.records.iter_records."""
    return [record for _, record in iter_records(path.read_bytes())]


def plain_count(path: Path) -> int:
    return len(iter_records(path.read_bytes()))


def plain_latest(path: Path) -> dict[str, tuple[int, float]]:
    """name -> (step, value) of its last record."""
    return {r.name: (r.step, r.value) for r in plain_read(path)}


def plain_lttb(points: list[tuple[int, float]], threshold: int) -> list[tuple[int, float]]:
    """Largest-Triangle-Three-Buckets (Steinarsson 2013), x = step, y = value."""
    n = len(points)
    if threshold >= n:
        return points
    every = (n - 2) / (threshold - 2)
    chosen = [points[0]]
    a = 0
    for i in range(threshold - 2):
        avg_start = int((i + 1) * every) + 1
        avg_end = min(int((i + 2) * every) + 1, n)
        avg_x = sum(p[0] for p in points[avg_start:avg_end]) / (avg_end - avg_start)
        avg_y = sum(p[1] for p in points[avg_start:avg_end]) / (avg_end - avg_start)
        ax, ay = points[a]
        best, best_area = -1, -1.0
        for j in range(int(i * every) + 1, int((i + 1) * every) + 1):
            x, y = points[j]
            area = abs((ax - avg_x) * (y - ay) - (ax - x) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        chosen.append(points[best])
        a = best
    chosen.append(points[-1])
    return chosen


def plain_downsample(path: Path) -> list[tuple[int, float]]:
    """The LTTB baseline: read, parse, then LTTB over the "loss" points."""
    points = [(r.step, r.value) for r in plain_read(path) if r.name == "loss"]
    return plain_lttb(points, LTTB_POINTS)


def timed(function: Any, *args: Any) -> tuple[Any, float]:
    """(result, seconds) of one call."""
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def reads(b: Bench) -> list[Row]:
    """QUERY_METRICS on pre-built experiments against plain Python on the same files."""
    n = b.sizes.read_records
    daemon = b.load(
        "reads",
        b.write,
        many=commit("reads-many"),
        one=commit("reads-one"),
        name="loss",
        points=LTTB_POINTS,
        repeat=b.sizes.lttb_repeat,
    )
    b.details["reads"] = {k: v for k, v in daemon.items() if not k.endswith("_points")}
    files = b.tmp / "write" / "experiments"
    many = files / commit("reads-many") / "metrics.bin"
    one = files / commit("reads-one") / "metrics.bin"
    parsed, parse_s = timed(plain_count, many)
    latest, latest_s = timed(plain_latest, many)
    series, lttb_s = timed(plain_downsample, one)
    check_reads(b, daemon, n, latest, series)
    return [
        paging_row(
            daemon.get("first_pass", {}), "first pass, daemon indexes the file", parsed / parse_s
        ),
        paging_row(daemon.get("second_pass", {}), "again", parsed / parse_s),
        Row(
            f"QUERY LTTB {n:,} -> {LTTB_POINTS:,} points",
            "ms",
            daemon.get("lttb_ms"),
            lttb_s * 1000,
            "py read+parse+LTTB",
            Target(at_least=False, limit=300),
        ),
        Row(
            f"QUERY latest per name ({len(READ_NAMES)} names, {n:,} records)",
            "ms",
            daemon.get("latest_ms"),
            latest_s * 1000,
            "py read+parse",
        ),
    ]


def paging_row(run: dict[str, Any], label: str, plain_rate: float) -> Row:
    """Records per second paging through a whole experiment."""
    rate = run["records"] / run["seconds"] if run.get("seconds") else None
    return Row(
        f"QUERY paging {run.get('records', 0):,} records, {label}",
        "records/s",
        rate,
        plain_rate,
        "py read+parse",
        Target(at_least=True, limit=5_000_000),
    )


def check_reads(
    b: Bench,
    daemon: dict[str, Any],
    n: int,
    latest: dict[str, tuple[int, float]],
    series: list[tuple[int, float]],
) -> None:
    """Counts must match; LTTB picks that differ from the reference are only noted."""
    for key in ("first_pass", "second_pass"):
        got = daemon.get(key, {}).get("records")
        if got != n:
            b.errors.append(f"reads: paging ({key}) returned {got} records of {n}")
    served_latest = {name: (step, value) for name, step, value in daemon.get("latest_points", [])}
    if served_latest != latest:
        b.errors.append(f"reads: latest per name {served_latest} differs from the file's {latest}")
    served = [(step, value) for _, step, value in daemon.get("lttb_points", [])]
    if len(served) != LTTB_POINTS:
        b.errors.append(f"reads: LTTB returned {len(served)} points, not {LTTB_POINTS}")
    elif served != series:
        differ = sum(1 for s, p in zip(served, series, strict=True) if s != p)
        b.notes.append(f"LTTB: {differ} of {LTTB_POINTS} points differ from the reference LTTB")


# -- figures: watch -----------------------------------------------------------------------------


def push_latency(b: Bench) -> list[Row]:
    """Watchers on one experiment under a paced writer: the writer's ack to each receipt.
    Baseline: the round trip of the same frames at the same rate through the echo server."""
    options = dict(
        commits=commit("watch"),
        per_message=STREAM_BATCH,
        rate=WATCH_RATE,
        seconds=b.sizes.watch_seconds,
    )
    echo = b.load("paced", b.echo, **options)
    daemon = b.load(
        "watch", b.write, watchers=b.sizes.watchers, from_index=WATCH_HISTORY, **options
    )
    b.verify(b.write, {"watch": WATCH_HISTORY + daemon.get("ok", 0) * STREAM_BATCH})
    b.details["push_latency"] = {"echo": echo, "write": daemon}
    return [
        Row(
            f"WATCH push {percentile}, {b.sizes.watchers} watchers, "
            f"{WATCH_RATE} x {STREAM_BATCH} metrics/s",
            "ms",
            latency(daemon, "push_latency_ms", percentile),
            latency(echo, "latency_ms", percentile),
            "echo round trip",
        )
        for percentile in ("p50", "p99")
    ]


def watcher_cost(b: Bench) -> list[Row]:
    """Max-speed LOG_METRICS ingest with and without watchers on the experiment."""
    options = dict(per_message=STREAM_BATCH, seconds=b.sizes.ingest_seconds, window=BATCH_WINDOW)
    cpu = b.write.cpu_seconds()
    alone = b.load("pipeline", b.write, commits=commit("ingest-alone"), **options)
    alone_cpu = b.write.cpu_seconds() - cpu
    b.verify(b.write, {"ingest-alone": WATCH_HISTORY + acked(alone)})
    watchers = b.start_load(
        "watchers",
        b.write,
        commits=commit("ingest-watched"),
        watchers=b.sizes.watchers,
        from_index=WATCH_HISTORY,
    )
    try:
        cpu = b.write.cpu_seconds()
        watched = b.load("pipeline", b.write, commits=commit("ingest-watched"), **options)
        watched_cpu = b.write.cpu_seconds() - cpu
    finally:
        followed = b.finish_load(watchers, "watchers", b.write)
    b.verify(b.write, {"ingest-watched": WATCH_HISTORY + acked(watched)})
    b.details["watcher_cost"] = {
        "alone": {**alone, "daemon_cpu_s": alone_cpu},
        "watched": {**watched, "daemon_cpu_s": watched_cpu},
        "watchers": followed,
    }
    b.notes.append(
        f"watcher cost: daemon CPU per million metrics {cpu_per_million(alone, alone_cpu)} s "
        f"alone, {cpu_per_million(watched, watched_cpu)} s with watchers (their process "
        "competes for the same CPUs)"
    )
    if followed:
        b.notes.append(
            f"watcher cost: {followed['watchers']} watchers received {followed['records']:,} "
            f"records in {followed['pushes']:,} pushes while {acked(watched):,} were written; "
            f"closed as too slow {followed['slow_closes']} times (they resume)"
        )
    return [
        Row(
            f"LOG_METRICS {STREAM_BATCH}/msg at max speed, {b.sizes.watchers} watchers",
            "metrics/s",
            metrics_per_second(watched),
            metrics_per_second(alone),
            "no watchers",
            Target(at_least=True, limit=0.9, of_ratio=True),
        )
    ]


def cpu_per_million(result: dict[str, Any], cpu_seconds: float) -> str:
    metrics = acked(result)
    return f"{cpu_seconds / metrics * 1e6:.2f}" if metrics else "n/a"


# -- figures: memory -----------------------------------------------------------------------------


def connection_cost(b: Bench, server: Server) -> float | None:
    """Server RSS growth per idle connection (then the server is stopped)."""
    count = b.sizes.idle_connections
    before = server.rss()
    idle = b.start_load("idle", server, connections=count)
    try:
        if server.is_daemon:
            open_now = wait_for_connections(server, count)
            if open_now != count:
                b.errors.append(
                    f"{server.name}: /health counts {open_now} connections, not {count}"
                )
        time.sleep(IDLE_SETTLE_S)
        after = server.rss()
    finally:
        result = b.finish_load(idle, "idle", server)
    b.details.setdefault("idle_memory", {})[server.name] = {
        "rss_before": before,
        "rss_after": after,
        **result,
    }
    b.stop(server)
    opened = result.get("connections")
    return (after - before) / opened if opened else None


def wait_for_connections(server: Server, count: int, timeout: float = 10) -> int:
    """The daemon's open connections (GET /health), once `count` or after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        open_now = int(server.health()["connections"])
        if open_now == count or time.monotonic() > deadline:
            return open_now
        time.sleep(0.1)


def idle_memory(b: Bench) -> list[Row]:
    """Fresh servers: RSS before and after opening many idle connections."""
    echo = connection_cost(b, b.start_echo("echo-idle"))
    daemon = connection_cost(b, b.start_daemon("idle", "write", {}))
    return [
        Row(
            f"RSS per idle connection, {b.sizes.idle_connections:,} connections",
            "bytes",
            daemon,
            echo,
            "echo",
            Target(at_least=False, limit=25 * 1024),
        )
    ]


# -- the run --------------------------------------------------------------------------------------


def write_daemon_experiments(sizes: Sizes) -> dict[str, bytes]:
    history = many_names_records(WATCH_HISTORY)
    experiments = {label: b"" for label in ("single", "latency", "batch")}
    experiments.update({f"stream-{i}": b"" for i in range(STREAMS)})
    experiments.update({label: history for label in ("watch", "ingest-alone", "ingest-watched")})
    experiments["reads-many"] = many_names_records(sizes.read_records)
    experiments["reads-one"] = one_series_records(sizes.read_records)
    return experiments


FIGURES = [
    single_metric_ingest,
    ack_latency,
    batched_ingest,
    many_connections,
    reads,
    push_latency,
    watcher_cost,
]


def run(b: Bench, rows: list[Row]) -> None:
    started = time.monotonic()
    b.start_main_servers()
    progress("servers started", started)
    for figure in FIGURES:
        rows += figure(b)
        progress(figure.__name__, started)
    b.stop_all()
    rows += idle_memory(b)
    progress("idle_memory", started)


def progress(step: str, started: float) -> None:
    print(f"[{time.monotonic() - started:5.1f} s] {step}", file=sys.stderr, flush=True)


def table_line(r: Row) -> tuple[str, ...]:
    return (
        r.figure,
        r.unit,
        fmt(r.value, r.unit),
        fmt(r.baseline, r.unit),
        "n/a" if r.ratio is None else f"{r.ratio:.2f}x",
        r.baseline_name,
        r.target.text(r.unit) if r.target else "",
        r.status,
    )


def print_table(rows: list[Row], mode: str) -> None:
    print(f"\nfetchml bench ({mode}); ratio = fetchml / baseline\n")
    header = ("figure", "unit", "fetchml", "baseline", "ratio", "baseline is", "target", "")
    lines = [header] + [table_line(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [
            cell.rjust(width) if i in (2, 3, 4) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def environment(tmp: Path) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "data_dir": str(tmp),
    }


def print_report(rows: list[Row], b: Bench, mode: str) -> None:
    print_table(rows, mode)
    for note in b.notes:
        print(f"note: {note}")
    for error in b.errors:
        print(f"ERROR: {error}")


def write_report(path: Path, rows: list[Row], b: Bench, mode: str, env: dict[str, Any]) -> None:
    report = {
        "mode": mode,
        "sizes": asdict(b.sizes),
        "environment": env,
        "rows": [r.as_json() for r in rows],
        "notes": b.notes,
        "errors": b.errors,
        "details": b.details,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 30 s, smaller counts (CI)")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp data dir")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    raise_open_file_limit()
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fetchml-bench-", dir=args.dir) as tmp:
        b = Bench(Path(tmp), QUICK if args.quick else FULL)
        env = environment(Path(tmp))
        try:
            run(b, rows)
        except Exception as exc:  # a dead daemon, a server that would not start
            traceback.print_exc()
            b.errors.append(f"benchmark stopped: {exc}")
        finally:
            b.stop_all()
    print_report(rows, b, mode)
    write_report(args.json, rows, b, mode, env)
    print(f"\n{len(b.errors)} errors, {time.monotonic() - started:.0f} s; results in {args.json}")
    return 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
