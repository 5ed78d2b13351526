"""scripts/cluster.py: Redis and three daemons over one data directory, each answering with the
dev key; the printed FETCHML_URL lists them all; SIGTERM stops every process it started."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio

from fetchml.client.connection import Client
from tests.support.daemon import ROOT, free_port

DEV_KEY = "fml_dev_insecure_local_key"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_three_nodes_answer_and_stop_together(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    first = ports[0]
    if ports != [first, first + 1, first + 2]:  # consecutive ports: take three free in a row
        first = max(ports) + 10
    argv = [sys.executable, "scripts/cluster.py", "--port", str(first)]
    argv += ["--redis-port", str(free_port()), "--data", str(tmp_path / "cluster")]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        started = await _check(proc, first)
    for pid in started:
        assert not os.path.exists(f"/proc/{pid}"), f"{pid} outlived scripts/cluster.py"


async def _check(proc: "subprocess.Popen[str]", first: int) -> list[int]:
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        with anyio.fail_after(60):
            while not any("FETCHML_URL=" in line for line in lines):
                line = await anyio.to_thread.run_sync(proc.stdout.readline)
                assert line, f"scripts/cluster.py ended: {''.join(lines)}"
                lines.append(line)
        url = next(line for line in lines if "FETCHML_URL=" in line).split("FETCHML_URL=")[1]
        urls = url.split()[0].split(",")
        assert urls == [f"ws://127.0.0.1:{first + i}/ws" for i in range(3)]
        for node in urls:
            async with Client.connect(node, DEV_KEY) as client:
                assert (await client.whoami()).user == "dev"
        started = children(proc.pid)
        assert len(started) == 4  # redis-server and three daemons
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    return started
