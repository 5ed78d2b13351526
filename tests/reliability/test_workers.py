"""Workers under fire: a daemon subprocess with short leases, `fetchml worker` subprocesses
killed with SIGKILL, a daemon killed and restarted under a running job, and two workers
racing over one queue.

Job programs are /bin/sh scripts that append a line to a file in tmp_path each time they
start, so the tests count how many times each job really ran. FETCHML_LONG=1 races over
2,000 jobs instead of 200.
"""

import asyncio
import collections
import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fetchml.client import Client
from fetchml.client.models import Job
from tests.support.daemon import DEADLINE_S, DaemonProcess, daemon_at, poll
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY, WORKER_KEY
from tests.support.worker import WorkerProcess, file_text, pid_alive, wait_jobs

LONG = os.environ.get("FETCHML_LONG") == "1"
RACE_JOBS = 2000 if LONG else 200
RACE_DEADLINE_S = 60 + RACE_JOBS * 0.1
RACE_MESSAGE_BYTES = 4 << 20
LEASE_S = 2
"""Short enough that a dead worker's job comes back within seconds."""
RESTART_LEASE_S = 10
"""Longer than a daemon restart plus the worker's reconnect backoff."""
RUN = commit_of("worker-runs")
SH = "/bin/sh"


class Workers:
    """`fetchml worker` subprocesses, each on its own --workdir unless given one; at the end
    every one still running is killed, and so is every `sleep` a job program recorded in a
    file of `pid_files`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.started: list[WorkerProcess] = []
        self.pid_files: list[Path] = []

    def start(self, url: str, name: str, *args: str, workdir: Path | None = None) -> WorkerProcess:
        log = self.home / f"worker-{name}-{len(self.started)}.log"
        workdir = workdir or self.home / f"{name}-jobs"
        proc = WorkerProcess(url, WORKER_KEY, workdir, log, "--name", name, *args)
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            proc.reap()
        for path in self.pid_files:
            if path.exists() and path.read_text().strip():
                kill_sleeper(int(path.read_text()))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


async def kill9(worker: WorkerProcess) -> None:
    worker.signal(signal.SIGKILL)
    assert await worker.wait_exit() == -signal.SIGKILL


def start_daemon(tmp_path: Path, lease_s: float, **sections: dict[str, Any]) -> DaemonProcess:
    home = tmp_path / "daemon"
    home.mkdir()
    return daemon_at(home, jobs={"lease_s": lease_s}, **sections).start()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    server = start_daemon(tmp_path, LEASE_S)
    try:
        yield server
    finally:
        server.reap()


def kill_sleeper(pid: int) -> None:
    """SIGKILL a job program's `sleep 60` left behind by a failed test (only that: the pid
    may have been reused)."""
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
            os.kill(pid, signal.SIGKILL)


def pgid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def queue(url: str, name: str, script: str, **spec: Any) -> Job:
    """Queue `sh -c script` (spec keys: env, max_attempts, timeout_s)."""
    async with Client.connect(url, api_key=ADMIN_KEY) as client:
        return await client.queue_job(name, RUN, spec={"command": [SH, "-c", script], **spec})


async def job_now(url: str, job_id: str) -> Job:
    """The job as STATUS shows it now (STATUS also expires lost leases)."""
    async with Client.connect(url, api_key=ADMIN_KEY) as client:
        status = await client.status()
    (job,) = [job for job in status.jobs if job.id == job_id]
    return job


async def wait_job(url: str, job_id: str, status: str) -> Job:
    """Poll STATUS until the job has `status`."""
    return await wait_for(url, job_id, lambda job: job.status_name == status, status)


async def wait_for(url: str, job_id: str, check: Callable[[Job], bool], what: str) -> Job:
    """Poll STATUS until `check(job)`; fail with the job's last state after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not check(job := await job_now(url, job_id)):
        if time.monotonic() > deadline:
            raise AssertionError(f"job not {what} after {DEADLINE_S:.0f} s: {job}")
        await asyncio.sleep(0.1)
    return job


# -- a worker killed with -9 ----------------------------------------------------------------------

FIRST_RUN_HANGS = """
echo "$FETCHML_JOB_ID" >> "$RUNS"
if [ ! -e "$LEADER" ]; then echo $$ > "$LEADER"; exec sleep 60; fi
"""
"""The first run records its pid and becomes `sleep 60` (the leader, with the worker's
PDEATHSIG); a second run ends at once."""


async def kill_worker_mid_job(
    daemon: DaemonProcess, workers: Workers, tmp_path: Path, max_attempts: int
) -> tuple[Job, Path]:
    """Queue a FIRST_RUN_HANGS job, let worker "a" start it, SIGKILL the worker, and check
    the job's program died with it. Returns the job (as queued) and the RUNS file."""
    runs, leader = tmp_path / "runs", tmp_path / "leader.pid"
    workers.pid_files.append(leader)
    env = {"RUNS": str(runs), "LEADER": str(leader)}
    job = await queue(daemon.url, "crash", FIRST_RUN_HANGS, env=env, max_attempts=max_attempts)
    worker = workers.start(daemon.url, "a")
    pid = int(await file_text(leader))
    assert pid_alive(pid)
    await kill9(worker)
    killed = time.monotonic()
    await poll(lambda: not pid_alive(pid), "the job's program to die with its worker")
    print(f"job program gone {time.monotonic() - killed:.3f} s after its worker's SIGKILL")
    return job, runs


async def test_a_killed_worker_s_job_runs_again_on_another_worker(
    daemon: DaemonProcess, workers: Workers, tmp_path: Path
) -> None:
    job, runs = await kill_worker_mid_job(daemon, workers, tmp_path, max_attempts=2)
    killed = time.monotonic()
    requeued = await wait_job(daemon.url, job.id, "queued")
    print(f"requeued {time.monotonic() - killed:.2f} s after the kill (lease {LEASE_S} s)")
    assert (requeued.attempts, requeued.worker_id, requeued.started_at) == (1, None, None)
    workers.start(daemon.url, "b")
    done = await wait_job(daemon.url, job.id, "completed")
    assert (done.attempts, done.worker_id, done.error) == (1, "b", None)
    assert lines(runs) == [job.id, job.id]  # ran twice: once per worker


async def test_a_killed_worker_s_last_attempt_fails_lease_expired(
    daemon: DaemonProcess, workers: Workers, tmp_path: Path
) -> None:
    job, runs = await kill_worker_mid_job(daemon, workers, tmp_path, max_attempts=1)
    failed = await wait_job(daemon.url, job.id, "failed")
    assert (failed.attempts, failed.error) == (1, "lease expired")
    assert failed.ended_at is not None
    assert lines(runs) == [job.id]  # ran once, never again


# -- two workers racing ---------------------------------------------------------------------------

APPEND_ID = 'echo "$FETCHML_JOB_ID" >> "$OUT"'


@pytest.mark.timeout(RACE_DEADLINE_S + 60)
async def test_two_workers_run_each_of_many_jobs_exactly_once(
    workers: Workers, tmp_path: Path
) -> None:
    # STATUS must hold every job: 2,000 of them take more than the default 1 MiB.
    server = start_daemon(tmp_path, LEASE_S, server={"max_message_bytes": RACE_MESSAGE_BYTES})
    out = tmp_path / "out"
    spec = {"command": [SH, "-c", APPEND_ID], "env": {"OUT": str(out)}}
    try:
        async with Client.connect(
            server.url, ADMIN_KEY, max_message_bytes=RACE_MESSAGE_BYTES
        ) as client:
            queued = await asyncio.gather(
                *(client.queue_job(f"race-{i}", RUN, spec=spec) for i in range(RACE_JOBS))
            )
            started = time.monotonic()
            for name in ("x", "y"):
                workers.start(server.url, name, "--concurrency", "2")
            await poll(
                lambda: len(lines(out)) >= RACE_JOBS,
                f"{RACE_JOBS} job programs to run",
                RACE_DEADLINE_S,
            )
            ids = [job.id for job in queued]
            jobs = await wait_jobs(client, ids, states=("completed",))
    finally:
        server.reap()
    elapsed = time.monotonic() - started
    slots = collections.Counter(j.worker_id for j in jobs.values())
    first = min(j.started_at or 0 for j in jobs.values())
    last = max(j.ended_at or 0 for j in jobs.values())
    print(
        f"{RACE_JOBS} jobs on 2 workers x 2 slots: all completed {elapsed:.2f} s after the "
        f"workers were started ({elapsed / RACE_JOBS * 1000:.1f} ms a job); first start to "
        f"last end {last - first} s in the daemon's whole seconds; per slot {dict(slots)}"
    )
    ran = collections.Counter(lines(out))
    assert ran == {job_id: 1 for job_id in ids}  # each exactly once
    assert set(slots) <= {"x/0", "x/1", "y/0", "y/1"}
    assert len(slots) >= 2


# -- the daemon killed under a running job --------------------------------------------------------

WAIT_FOR_GO = """
echo start >> "$RUNS"
while [ ! -e "$GO" ]; do sleep 0.05; done
echo done >> "$RUNS"
"""


async def test_a_daemon_restart_loses_neither_the_job_nor_its_result(
    workers: Workers, tmp_path: Path
) -> None:
    """kill -9 the daemon while the job runs and start it again: heartbeats resume; kill it
    again and let the job end while it is down: the result is delivered after the restart."""
    server = start_daemon(tmp_path, RESTART_LEASE_S)
    try:
        runs, go = tmp_path / "runs", tmp_path / "go"
        job = await queue(
            server.url, "restart", WAIT_FOR_GO, env={"RUNS": str(runs), "GO": str(go)}
        )
        workers.start(server.url, "r")
        await poll(lambda: lines(runs) == ["start"], "the job to start")

        server.kill()
        server.start()
        second_after = math.ceil(time.time())  # heartbeat_at is in whole seconds
        await wait_for(
            server.url,
            job.id,
            lambda j: j.heartbeat_at is not None and j.heartbeat_at >= second_after,
            "heartbeating after the restart",
        )

        server.kill()
        go.touch()
        await poll(lambda: lines(runs) == ["start", "done"], "the job to end")
        await asyncio.sleep(0.5)  # the worker tries to report while the daemon is down
        server.start()
        back = time.monotonic()
        done = await wait_job(server.url, job.id, "completed")
        print(f"result recorded {time.monotonic() - back:.2f} s after the daemon came back")
        assert (done.attempts, done.worker_id, done.error) == (0, "r", None)
        assert lines(runs) == ["start", "done"]  # ran once
        assert server.starts == 3
    finally:
        server.reap()


# -- leftovers of a killed worker -----------------------------------------------------------------

GRANDCHILD = """
(sleep 60 & echo $! > "$GRAND")
echo $$ > "$LEADER"
exec sleep 60
"""
"""A grandchild in the job's process group whose parent exits at once: PDEATHSIG, which
only the leader has, does not reach it."""


async def test_a_restarted_worker_kills_the_leftovers_of_its_previous_run(
    daemon: DaemonProcess, workers: Workers, tmp_path: Path
) -> None:
    grand, leader = tmp_path / "grand.pid", tmp_path / "leader.pid"
    workers.pid_files += [grand, leader]
    env = {"GRAND": str(grand), "LEADER": str(leader)}
    await queue(daemon.url, "leftover", GRANDCHILD, env=env, max_attempts=1)
    workdir = tmp_path / "jobs"
    worker = workers.start(daemon.url, "k", workdir=workdir)
    leader_pid, grand_pid = int(await file_text(leader)), int(grand.read_text())
    assert pgid_of(grand_pid) == pgid_of(leader_pid) == leader_pid
    await kill9(worker)
    await poll(lambda: not pid_alive(leader_pid), "the leader to die with its worker")
    assert pid_alive(grand_pid)  # PDEATHSIG did not reach it

    restarted = time.monotonic()
    workers.start(daemon.url, "k", workdir=workdir)
    await poll(lambda: not pid_alive(grand_pid), "the restarted worker to kill the leftover")
    print(f"leftover killed {time.monotonic() - restarted:.2f} s after the worker restarted")
