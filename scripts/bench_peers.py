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

from bench_peers_fetchml import (  # noqa: E402
    Run,
    blocking_calls,
    client_calls,
    fill,
    logger_closed,
    logger_flushed,
    read_columns,
)

from tests.support.daemon import DaemonProcess, daemon_at, free_port  # noqa: E402

PEERS = ("fasttrackml==0.6.0", "mlflow-skinny==3.17.2")
VENV = ROOT / ".venv-peers"
PEER_CLIENT = ROOT / "scripts" / "bench_peers_mlflow.py"
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Sizes:
    sync_calls: int  # one metric per call, each waiting for its answer
    peer_batched: int  # metrics in MLflow log_batch calls of 1,000
    logger_points: int  # MetricLogger.log calls before close()
    async_calls: int  # mlflow.log_metric(synchronous=False) calls
    read_points: int  # points of one name read back


FULL = Sizes(1_000, 100_000, 1_000_000, 5_000, 100_000)
QUICK = Sizes(100, 5_000, 50_000, 1_000, 5_000)


@dataclass(frozen=True)
class Figure:
    """A row of the table: a rate (median units/s) or, with `cpu`, the server's median CPU
    seconds per million units."""

    label: str
    unit: str
    peer: list[Run]
    ours: list[Run]
    cpu: bool = False


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
    server, client = PEERS
    # fasttrackml's own dependency is the whole of mlflow 2, whose `mlflow` package would
    # shadow mlflow-skinny's: only its Go binary (bin/fml) is wanted.
    for packages in (["--no-deps", server], [client]):
        pip = [str(python), "-m", "pip", "install", "--quiet", "--index-url", index]
        done = subprocess.run([*pip, *packages], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench-peers: pip install {packages[-1]} failed:\n{done.stderr}")
    stamp.write_text("\n".join(PEERS))
    return python


# -- servers ----------------------------------------------------------------------------------


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
    """One figure timed by the MLflow client (its run must then hold `n` points); `fill`
    answers the new run's ID in place of the count."""
    argv = [str(python), str(PEER_CLIENT), mode, url, str(n), *([run_id] if run_id else [])]
    env = {**os.environ, "BENCH_SERVER_PID": str(pid)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"MLflow client {mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["count"] != n:
        raise SystemExit(f"MLflow {mode}: the run holds {result['count']} of {n} points")
    return Run(result["seconds"], n, result["cpu"], result["run_id"])


# -- the table --------------------------------------------------------------------------------


def rate(runs: list[Run]) -> float:
    """Median units per second."""
    return statistics.median(r.count / r.seconds for r in runs)


def cpu_per_million(runs: list[Run]) -> float:
    """Median server CPU seconds per million units."""
    return statistics.median(r.cpu / r.count * 1e6 for r in runs)


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(figures: list[Figure]) -> str:
    """Markdown: each figure's medians and fetchml's lead (a higher rate, or less CPU)."""
    lines = ["| figure | FastTrackML | fetchml | fetchml's lead |", "|---|---|---|---|"]
    for f in figures:
        if f.cpu:
            peer, ours = cpu_per_million(f.peer), cpu_per_million(f.ours)
            lead = f"{peer / ours:.1f}x" if ours > 0 else "n/a"
        else:
            peer, ours = rate(f.peer), rate(f.ours)
            lead = f"{ours / peer:.1f}x"
        lines.append(f"| {f.label} ({f.unit}) | {number(peer)} | {number(ours)} | {lead} |")
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
        (home / "fetchml").mkdir()
        fml, fml_url = start_fasttrackml(python.parent.parent, home / "fasttrackml")
        daemon: DaemonProcess | None = None
        try:
            daemon = daemon_at(home / "fetchml").start()
            peers = Servers(python, fml_url, fml.pid, daemon.url, daemon.pid)
            figures = measure(peers, sizes, args.rounds)
        finally:
            fml.terminate()
            fml.wait(30)
            if daemon is not None:
                daemon.close()
    load_after = os.getloadavg()
    print(
        f"{started}, {machine()}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; medians of {args.rounds} alternating runs"
    )
    print(table(figures))
    return 0


@dataclass(frozen=True)
class Servers:
    python: Path  # the peers' venv
    fml_url: str
    fml_pid: int
    url: str
    pid: int


def measure(s: Servers, sizes: Sizes, rounds: int) -> list[Figure]:
    """Each pair of runs, FastTrackML's and fetchml's, in turn; who goes first alternates."""
    read_run = peer(s.python, s.fml_url, s.fml_pid, "fill", sizes.read_points).run_id
    commit = asyncio.run(fill(s.url, sizes.read_points, "peers-read"))

    def theirs(mode: str, n: int, run_id: str = "") -> Callable[[], Run]:
        return lambda: peer(s.python, s.fml_url, s.fml_pid, mode, n, run_id)

    calls, points = sizes.sync_calls, sizes.logger_points
    pairs: dict[str, tuple[Callable[[], Run], Callable[[], Run]]] = {
        "blocking": (theirs("sync", calls), lambda: blocking_calls(s.url, s.pid, calls)),
        "sync": (theirs("sync", calls), lambda: asyncio.run(client_calls(s.url, s.pid, calls))),
        "flush": (theirs("sync", calls), lambda: logger_flushed(s.url, s.pid, calls)),
        "batched": (
            theirs("batch", sizes.peer_batched),
            lambda: logger_closed(s.url, s.pid, points),
        ),
        "async": (theirs("async", sizes.async_calls), lambda: logger_closed(s.url, s.pid, points)),
        "read": (
            theirs("read", sizes.read_points, read_run),
            lambda: asyncio.run(read_columns(s.url, s.pid, commit, sizes.read_points)),
        ),
    }
    peer_runs: dict[str, list[Run]] = {name: [] for name in pairs}
    our_runs: dict[str, list[Run]] = {name: [] for name in pairs}
    for r in range(rounds):
        for name, (peer_run, our_run) in pairs.items():
            if r % 2 == 0:
                peer_runs[name].append(peer_run())
                our_runs[name].append(our_run())
            else:
                our_runs[name].append(our_run())
                peer_runs[name].append(peer_run())
            print(f"round {r + 1} of {rounds}: {name} done", file=sys.stderr)
    logged = f"MetricLogger {points:,} + close()"
    return [
        Figure(
            "one metric per synchronous call, SyncClient.log_metric",
            "calls/s",
            peer_runs["blocking"],
            our_runs["blocking"],
        ),
        Figure(
            "one metric per synchronous call, Client.log_metric awaited",
            "calls/s",
            peer_runs["sync"],
            our_runs["sync"],
        ),
        Figure(
            "one metric per synchronous call, MetricLogger.log + flush()",
            "calls/s",
            peer_runs["flush"],
            our_runs["flush"],
        ),
        Figure(
            f"batched end to end: log_batch of 1,000 vs {logged}",
            "metrics/s",
            peer_runs["batched"],
            our_runs["batched"],
        ),
        Figure(
            f"async: log_metric(synchronous=False) + flush vs {logged}",
            "metrics/s",
            peer_runs["async"],
            our_runs["async"],
        ),
        Figure(
            f"read back {sizes.read_points:,} points: get_metric_history vs query_columns",
            "points/s",
            peer_runs["read"],
            our_runs["read"],
        ),
        Figure(
            "server CPU per million points, one per synchronous call",
            "s",
            peer_runs["blocking"],
            our_runs["blocking"],
            cpu=True,
        ),
        Figure(
            "server CPU per million points, batched",
            "s",
            peer_runs["batched"],
            our_runs["batched"],
            cpu=True,
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
