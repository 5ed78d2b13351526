"""A cluster to try on one machine: Debian's redis-server (appendonly) and N daemons over one
data directory, on consecutive ports from 9103, with the dev key of configs/dev.yaml.

Prints the FETCHML_URL (every node, comma-separated) once all are ready; Ctrl-C or SIGTERM
stops the daemons, then Redis. Everything lives under --data (default ./data/cluster)."""

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEV_CONFIG = ROOT / "configs" / "dev.yaml"
DEV_KEY = "fml_dev_insecure_local_key"
READY_S = 30.0


def node_config(data: Path, port: int, redis_port: int) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(DEV_CONFIG.read_text())
    config["server"] = {"host": "127.0.0.1", "port": port}
    config["storage"] = {
        "base_path": str(data / "experiments"),
        "jobs_db": str(data / f"node-{port}" / "jobs.sqlite3"),
        "durability": "write",
    }
    config["logging"] = {"level": "info", "audit_file": str(data / f"node-{port}" / "audit.jsonl")}
    config["cluster"] = {
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        "node_name": f"node-{port}",
    }
    return config


def start_redis(data: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("scripts/cluster needs redis-server: apt-get install redis-server")
    home = data / "redis"
    home.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(home)]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
    log = (home / "redis.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: port_open(port), f"redis-server on port {port}", proc)
    return proc


def start_node(data: Path, port: int, redis_port: int) -> subprocess.Popen[bytes]:
    home = data / f"node-{port}"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(node_config(data, port, redis_port)))
    argv = [sys.executable, "-m", "fetchml.server", "serve", "--config", str(config)]
    log = (home / "daemon.log").open("ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_until(ready: Any, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_S
    while not ready():
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            sys.exit(f"{what} not ready after {READY_S:g} s")
        time.sleep(0.05)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--port", type=int, default=9103, help="the first node's port")
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "cluster")
    args = parser.parse_args(argv)
    data = args.data.resolve()
    ports = [args.port + i for i in range(args.nodes)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    redis = start_redis(data, args.redis_port)
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes = [start_node(data, port, args.redis_port) for port in ports]
        for port, node in zip(ports, nodes, strict=True):
            wait_until(lambda p=port: healthy(p), f"node on port {port}", node)
        url = ",".join(f"ws://127.0.0.1:{port}/ws" for port in ports)
        print(f"fetchml cluster: redis-server on port {args.redis_port}, {len(ports)} nodes")
        print(f"  data:  {data} (each node's log: node-PORT/daemon.log)")
        print(f"  try:   export FETCHML_URL={url} FETCHML_API_KEY={DEV_KEY}")
        print("         .venv/bin/fetchml whoami", flush=True)
        while all(node.poll() is None for node in nodes) and redis.poll() is None:
            time.sleep(0.5)
        print("a node or redis-server exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(nodes)
        stop([redis])


if __name__ == "__main__":
    sys.exit(main())
