"""`fetchml worker` as a real subprocess, and waiting for jobs to end.

`WorkerProcess` runs `python -m fetchml.client.cli --url URL --api-key KEY worker ARGS`
with this checkout on PYTHONPATH (which its jobs inherit, so a job's Python program can
`import fetchml`); its stderr (the worker's log) goes to a file. Waits poll with a
deadline and never block the event loop (the daemon may run in it).
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fetchml.client.connection import Client
from fetchml.client.models import Job

from .daemon import ROOT, SYSTEMD_ENV, poll

ENDED = ("completed", "failed", "cancelled")


class WorkerProcess:
    def __init__(self, url: str, key: str, workdir: Path, log: Path, *args: str) -> None:
        self.workdir = workdir
        self.log_path = log
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        env["PYTHONPATH"] = str(ROOT)
        argv = [sys.executable, "-m", "fetchml.client.cli", "--url", url, "--api-key", key]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "worker", "--workdir", str(workdir), *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        await poll(lambda: not self.running(), "the worker to exit", timeout)
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def wait_log(self, text: str, timeout: float = 30.0) -> None:
        await poll(lambda: text in self.log() or not self.running(), repr(text), timeout)
        assert text in self.log(), self.log()

    def reap(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


StartWorker = Callable[..., WorkerProcess]
"""`start_worker(*args, key=WORKER_KEY, name="box")` (the fixture of tests/worker)."""


def job_dir(workdir: Path, job: Job) -> Path:
    return workdir / job.id


def output_log(workdir: Path, job: Job) -> str:
    path = job_dir(workdir, job) / "output.log"
    return path.read_text(errors="replace") if path.exists() else ""


async def wait_jobs(
    client: Client, ids: list[str], states: tuple[str, ...] = ENDED, timeout: float = 30.0
) -> dict[str, Job]:
    """Poll STATUS until every job of `ids` is in one of `states`; the jobs by ID."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {job.id: job for job in (await client.status()).jobs if job.id in ids}
        if len(jobs) == len(ids) and all(j.status_name in states for j in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            now = {i: (j.status_name, j.error) for i, j in jobs.items()}
            raise AssertionError(f"jobs not {states} after {timeout:.0f} s: {now}")
        await asyncio.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


async def file_text(path: Path, timeout: float = 30.0) -> str:
    """The file's content once it exists and is not empty."""
    await poll(lambda: path.exists() and path.stat().st_size > 0, str(path), timeout)
    return path.read_text()
