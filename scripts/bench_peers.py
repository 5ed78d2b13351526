"""The daemon beside FastTrackML (a Go MLflow tracking server), as a user of each sees it.

Installs fasttrackml and mlflow-skinny (pinned) into their own venv (.venv-peers), starts
FastTrackML (SQLite in a temporary directory, a free port) and a fetchml daemon, and times,
alternating the two and taking the median of ROUNDS runs: one metric per synchronous call,
batched end to end, MLflow's async mode, reading 100,000 points back, and each server's CPU
seconds per million points ingested (/proc/PID/stat). MLflow's client runs in the peers'
venv (scripts/bench_peers_mlflow.py, a subprocess), fetchml's in this process.
Usage: python scripts/bench_peers.py [--quick] [--rounds N]   (through scripts/bench-peers)
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fetchml.client import Client, MetricLogger  # noqa: E402
from tests.support.daemon import DaemonProcess, daemon_at, free_port  # noqa: E402
from tests.support.experiments import commit_of  # noqa: E402
from tests.support.keys import ADMIN_KEY  # noqa: E402

PEERS = ("fasttrackml==0.6.0", "mlflow-skinny==3.17.2")
VENV = ROOT / ".venv-peers"
PEER_CLIENT = ROOT / "scripts" / "bench_peers_mlflow.py"
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")
START_TIMEOUT_S = 60
CHUNK = 10_000  # points per log_metrics call when filling the read-back experiment


@dataclass(frozen=True)
class Sizes:
    sync_calls: int  # one metric per call, each waiting for its answer
    peer_batched: int  # metrics in MLflow log_batch calls of 1,000
    logger_points: int  # MetricLogger.log calls before close()
    async_calls: int  # mlflow.log_metric(synchronous=False) calls
    read_points: int  # points of one name read back


FULL = Sizes(1_000, 100_000, 1_000_000, 20_000, 100_000)
QUICK = Sizes(100, 5_000, 50_000, 1_000, 5_000)


@dataclass(frozen=True)
class Run:
    """One timed run: `count` units in `seconds`, and the server's CPU seconds meanwhile."""

    seconds: float
    count: int
    cpu: float = 0.0


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    peer: list[Run]
    ours: list[Run]


# -- the peers' venv --------------------------------------------------------------------------


def ensure_venv(venv: Path = VENV, index: str = INDEX) -> Path:
    """The peers' python, installing PEERS into `venv` first unless the stamp says they are."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == "\n".join(PEERS):
        return python
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/fasttrackml/", timeout=15):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise SystemExit(
            f"bench-peers: cannot reach the package index {index} ({exc}); it needs it once "
            f"to install {' and '.join(PEERS)} into {venv}"
        ) from None
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing {' '.join(PEERS)} into {venv}", file=sys.stderr)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--index-url", index, *PEERS],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench-peers: pip install {' '.join(PEERS)} failed:\n{done.stderr}")
    stamp.write_text("\n".join(PEERS))
    return python


# -- servers ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_fasttrackml(venv: Path, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """FastTrackML's Go binary on a free port, its database a SQLite file under `home`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        str(venv / "bin" / "fml"),
        "server",
        "--listen-address",
        f"127.0.0.1:{port}",
        "--database-uri",
        f"sqlite://{home / 'fasttrackml.db'}",
    ]
    log = (home / "fasttrackml.log").open("wb")
    proc = subprocess.Popen(argv, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"fasttrackml exited ({proc.returncode}): see {log.name}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"fasttrackml did not answer on {url} within {START_TIMEOUT_S} s")


# -- MLflow's side (a subprocess in the peers' venv) ----------------------------------------------


def peer(python: Path, url: str, pid: int, mode: str, n: int, run_id: str = "") -> Run:
    """One figure timed by the MLflow client; the server's CPU over the timed part."""
    argv = [str(python), str(PEER_CLIENT), mode, url, str(n), *([run_id] if run_id else [])]
    env = {**os.environ, "BENCH_SERVER_PID": str(pid)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"MLflow client {mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = n
    if result["count"] != expected:
        raise SystemExit(f"MLflow {mode}: the run holds {result['count']} of {expected} points")
    return Run(result["seconds"], n, result["cpu"])


def peer_fill(python: Path, url: str, pid: int, n: int) -> str:
    argv = [str(python), str(PEER_CLIENT), "fill", url, str(n)]
    env = {**os.environ, "BENCH_SERVER_PID": str(pid)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"MLflow client fill failed:\n{done.stderr[-3000:]}")
    return str(json.loads(done.stdout.strip().splitlines()[-1])["run_id"])


# -- fetchml's side ---------------------------------------------------------------------------


def timed(pid: int, work: Callable[[], int]) -> Run:
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    count = work()
    seconds = time.perf_counter() - start
    return Run(seconds, count, cpu_seconds(pid) - cpu)


async def client_calls(url: str, pid: int, n: int) -> Run:
    """`n` LOG_METRIC into a new experiment, each awaited before the next is sent."""
    commit = commit_of(f"calls-{time.time_ns()}")
    async with Client.connect(url, api_key=ADMIN_KEY) as client:
        await client.create_experiment(commit)
        await client.log_metric(commit, "warm-up", 0.0)
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        for i in range(n):
            await client.log_metric(commit, "loss", i * 0.5, step=i)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu
        held = len(await client.query_columns(commit, "loss"))
    return checked(Run(seconds, n, cpu), held, "Client.log_metric")


def logger_flushed(url: str, pid: int, n: int) -> Run:
    """`n` MetricLogger.log calls, each followed by flush() (which waits for its ack)."""
    ml = MetricLogger(url=url, api_key=ADMIN_KEY, name="bench-flush")
    ml.log("warm-up", 0.0)
    ml.flush()

    def work() -> int:
        for i in range(n):
            ml.log("loss", i * 0.5, step=i)
            ml.flush()
        return n

    run = timed(pid, work)
    ml.close()
    return checked(run, ml.stats().acknowledged - 1, "MetricLogger.log + flush()")


def logger_closed(url: str, pid: int, n: int) -> Run:
    """`n` MetricLogger.log calls, then close() (every point acknowledged)."""
    ml = MetricLogger(url=url, api_key=ADMIN_KEY, name="bench-batched")

    def work() -> int:
        log = ml.log
        for i in range(n):
            log("loss", i * 0.5, step=i)
        if not ml.close(timeout=600):
            raise SystemExit("MetricLogger.close() failed")
        return n

    run = timed(pid, work)
    return checked(run, ml.stats().acknowledged, "MetricLogger + close()")


async def fill(url: str, n: int, label: str) -> str:
    commit = commit_of(label)
    async with Client.connect(url, api_key=ADMIN_KEY) as client:
        await client.create_experiment(commit)
        for first in range(0, n, CHUNK):
            last = min(first + CHUNK, n)
            await client.log_metrics(commit, (("loss", i * 0.5, i) for i in range(first, last)))
    return commit


async def read_columns(url: str, pid: int, commit: str, n: int) -> Run:
    """Client.query_columns of every point of one name, after one untimed read."""
    async with Client.connect(url, api_key=ADMIN_KEY) as client:
        await client.query_columns(commit, "loss")
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        columns = await client.query_columns(commit, "loss")
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu
    return checked(Run(seconds, n, cpu), len(columns), "Client.query_columns")


def checked(run: Run, held: int, what: str) -> Run:
    if held != run.count:
        raise SystemExit(f"{what}: the daemon holds {held} of {run.count} points")
    return run


# -- the table --------------------------------------------------------------------------------


def rate(runs: list[Run]) -> float:
    """Median units per second."""
    return statistics.median(r.count / r.seconds for r in runs)


def cpu_per_million(runs: list[Run]) -> float:
    """Median server CPU seconds per million units."""
    return statistics.median(r.cpu / r.count * 1e6 for r in runs)


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(figures: list[Figure], cpu: Figure) -> str:
    """Markdown: each figure's medians and fetchml's lead (higher rates, less CPU)."""
    lines = [
        "| figure | FastTrackML | fetchml | fetchml's lead |",
        "|---|---|---|---|",
    ]
    for f in figures:
        peer, ours = rate(f.peer), rate(f.ours)
        lines.append(
            f"| {f.label} ({f.unit}) | {number(peer)} | {number(ours)} | {ours / peer:.1f}x |"
        )
    peer, ours = cpu_per_million(cpu.peer), cpu_per_million(cpu.ours)
    lead = f"{peer / ours:.1f}x" if ours > 0 else "n/a"
    lines.append(f"| {cpu.label} ({cpu.unit}) | {peer:.3g} | {ours:.3g} | {lead} |")
    return "\n".join(lines)


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}"


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a check, not figures)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    python = ensure_venv()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fetchml-peers-") as tmp:
        home = Path(tmp)
        (home / "fasttrackml").mkdir()
        fml, fml_url = start_fasttrackml(python.parent.parent, home / "fasttrackml")
        daemon: DaemonProcess | None = None
        try:
            daemon = daemon_at(home / "fetchml").start()
            figures = measure(python, fml_url, fml.pid, daemon.url, daemon.pid, sizes, args.rounds)
        finally:
            fml.terminate()
            fml.wait(30)
            if daemon is not None:
                daemon.close()
    load_after = os.getloadavg()
    print(
        f"{started}, {machine()}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; medians of {args.rounds}, alternating"
    )
    print(table(figures[:-1], figures[-1]))
    return 0


def measure(
    python: Path, fml_url: str, fml_pid: int, url: str, pid: int, sizes: Sizes, rounds: int
) -> list[Figure]:
    names = ["sync", "flush", "batched", "async", "read"]
    peer_runs: dict[str, list[Run]] = {name: [] for name in names}
    our_runs: dict[str, list[Run]] = {name: [] for name in names}
    peer_run_id = peer_fill(python, fml_url, fml_pid, sizes.read_points)
    commit = asyncio.run(fill(url, sizes.read_points, "peers-read"))
    steps: list[tuple[str, Callable[[], Run], Callable[[], Run]]] = [
        (
            "sync",
            lambda: peer(python, fml_url, fml_pid, "sync", sizes.sync_calls),
            lambda: asyncio.run(client_calls(url, pid, sizes.sync_calls)),
        ),
        (
            "flush",
            lambda: peer(python, fml_url, fml_pid, "sync", sizes.sync_calls),
            lambda: logger_flushed(url, pid, sizes.sync_calls),
        ),
        (
            "batched",
            lambda: peer(python, fml_url, fml_pid, "batch", sizes.peer_batched),
            lambda: logger_closed(url, pid, sizes.logger_points),
        ),
        (
            "async",
            lambda: peer(python, fml_url, fml_pid, "async", sizes.async_calls),
            lambda: logger_closed(url, pid, sizes.logger_points),
        ),
        (
            "read",
            lambda: peer(python, fml_url, fml_pid, "read", sizes.read_points, peer_run_id),
            lambda: asyncio.run(read_columns(url, pid, commit, sizes.read_points)),
        ),
    ]
    for r in range(rounds):
        peers_first = r % 2 == 0
        for name, theirs, ours in steps:
            if peers_first:
                peer_runs[name].append(theirs())
                our_runs[name].append(ours())
            else:
                our_runs[name].append(ours())
                peer_runs[name].append(theirs())
            print(f"round {r + 1}: {name} done", file=sys.stderr)
    ingest_peer = peer_runs["batched"] + peer_runs["async"]
    ingest_ours = our_runs["batched"] + our_runs["async"]
    return [
        Figure(
            "one metric per synchronous call: log_metric vs Client.log_metric awaited",
            "calls/s",
            peer_runs["sync"],
            our_runs["sync"],
        ),
        Figure(
            "one metric per synchronous call: log_metric vs MetricLogger.log + flush()",
            "calls/s",
            peer_runs["flush"],
            our_runs["flush"],
        ),
        Figure(
            "batched, end to end incl. the final flush: log_batch of 1,000 vs MetricLogger "
            f"{sizes.logger_points:,} + close()",
            "metrics/s",
            peer_runs["batched"],
            our_runs["batched"],
        ),
        Figure(
            "async mode: log_metric(synchronous=False) + flush vs MetricLogger "
            f"{sizes.logger_points:,} + close()",
            "metrics/s",
            peer_runs["async"],
            our_runs["async"],
        ),
        Figure(
            f"read back {sizes.read_points:,} points: get_metric_history vs Client.query_columns",
            "points/s",
            peer_runs["read"],
            our_runs["read"],
        ),
        Figure(
            "server CPU per million points ingested, batched and async runs",
            "s",
            ingest_peer,
            ingest_ours,
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
