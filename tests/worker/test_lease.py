"""A running job and its lease: heartbeats keep it, the output tail reaches the run while it
runs, a job taken from the worker is stopped without a word, and a daemon restart costs
neither the job nor its result."""

import asyncio
import signal
import sys
import time
from pathlib import Path

import yaml

from fetchml.client.connection import Client
from fetchml.client.models import Job
from tests.support.config import write_config
from tests.support.daemon import daemon_at, poll
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY, WORKER_KEY
from tests.support.worker import (
    StartWorker,
    WorkerProcess,
    output_log,
    pid_alive,
    wait_jobs,
)

LEASE_S = 4
"""As tests/worker/conftest.py configures the daemon."""
SLEEPER = [sys.executable, "-c", "import time; print('early', flush=True); time.sleep(600)"]


async def job_of(client: Client, job_id: str) -> Job:
    return next(j for j in (await client.status()).jobs if j.id == job_id)


async def test_heartbeats_keep_the_lease_and_the_output_reaches_the_run_while_it_runs(
    admin: Client, start_worker: StartWorker, workdir: Path
) -> None:
    program = [
        sys.executable,
        "-c",
        "import time; print('early', flush=True); time.sleep(2); print('late', flush=True); "
        "time.sleep(600)",
    ]
    job = await admin.queue_job("long", commit_of("tail"), spec={"command": program})
    start_worker()
    await poll(lambda: "early" in output_log(workdir, job), "the job to print")
    printed = time.monotonic()

    async def output() -> str:
        run = (await admin.get_experiment(job.commit_id)).run
        return "" if run is None else str(run["output"])

    while "early" not in await output():
        assert time.monotonic() - printed < 30, "no output tail within 30 s"
        await asyncio.sleep(0.05)
    print(f"output tail in the run {time.monotonic() - printed:.2f} s after the job printed")
    await poll(lambda: "late" in output_log(workdir, job), "the job to print again")
    await asyncio.sleep(1.5)  # more than the worker's look at the file: it waits 10 s
    assert "late" not in await output()
    await asyncio.sleep(max(0.0, printed + LEASE_S + 1 - time.monotonic()))
    running = await job_of(admin, job.id)
    assert (running.status_name, running.attempts) == ("running", 0)  # past its lease
    assert running.heartbeat_at is not None
    assert await admin.cancel_job(job.id) == 1


async def test_a_job_whose_lease_expired_is_stopped_and_not_reported(
    admin: Client, start_worker: StartWorker, workdir: Path
) -> None:
    job = await admin.queue_job(
        "paused", commit_of("lease"), spec={"command": SLEEPER, "max_attempts": 2}
    )
    worker = start_worker()
    await poll(lambda: "early" in output_log(workdir, job), "the job to print")
    leader = int((workdir / job.id / "pid").read_text().split()[0])
    worker.signal(signal.SIGSTOP)  # no heartbeats: the lease (4 s) expires
    try:
        deadline = time.monotonic() + 30
        while (await job_of(admin, job.id)).attempts == 0:
            assert time.monotonic() < deadline, "the lease never expired"
            await asyncio.sleep(0.2)
    finally:
        worker.signal(signal.SIGCONT)
    await poll(lambda: not pid_alive(leader), "the first attempt to be stopped")
    await worker.wait_log("job no longer ours (job reassigned): stopping it")
    again = await wait_jobs(admin, [job.id], states=("running",))
    assert again[job.id].attempts == 1 and again[job.id].error is None
    assert await admin.cancel_job(job.id) == 1


async def test_a_daemon_restart_loses_neither_the_job_nor_its_result(tmp_path: Path) -> None:
    daemon = daemon_at(tmp_path, jobs={"lease_s": 20})
    go = tmp_path / "go"
    program = [
        sys.executable,
        "-c",
        "import os, pathlib, time\n"
        "print('up', flush=True)\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
        "print('done', flush=True)\n",
    ]
    workdir = tmp_path / "jobs"
    try:
        await daemon.spawn().wait_ready()
        async with Client.connect(daemon.url, ADMIN_KEY) as admin:
            job = await admin.queue_job("survivor", commit_of("restart"), spec={"command": program})
        worker = WorkerProcess(daemon.url, WORKER_KEY, workdir, tmp_path / "worker.log")
        try:
            await poll(lambda: "up" in output_log(workdir, job), "the job to start")
            daemon.kill()
            go.write_text("now")
            await worker.wait_log(f"job {job.id} exited: exit code 0")
            await worker.wait_log("cannot connect")  # its result waits for the daemon
            await daemon.spawn().wait_ready()
            async with Client.connect(daemon.url, ADMIN_KEY) as admin:
                done = (await wait_jobs(admin, [job.id]))[job.id]
                run = (await admin.get_experiment(job.commit_id)).run
            assert done.status_name == "completed", worker.log()
            assert run is not None and "done" in run["output"]
            assert "reconnected" in worker.log()
        finally:
            worker.reap()
    finally:
        daemon.reap()


async def test_a_revoked_key_stops_the_worker_and_its_jobs(tmp_path: Path) -> None:
    daemon = daemon_at(tmp_path, jobs={"lease_s": 20})
    workdir = tmp_path / "jobs"
    try:
        await daemon.spawn().wait_ready()
        async with Client.connect(daemon.url, ADMIN_KEY) as admin:
            job = await admin.queue_job("held", commit_of("revoked"), spec={"command": SLEEPER})
        worker = WorkerProcess(daemon.url, WORKER_KEY, workdir, tmp_path / "worker.log")
        try:
            await poll(lambda: "early" in output_log(workdir, job), "the job to start")
            leader = int((workdir / job.id / "pid").read_text().split()[0])
            assert daemon.config is not None
            config = yaml.safe_load(daemon.config.read_text())
            del config["auth"]["api_keys"]["wendy"]
            write_config(daemon.config, config)
            daemon.send_signal(signal.SIGHUP)
            assert await worker.wait_exit() == 1
            assert (
                worker.log()
                .rstrip()
                .endswith("error: the daemon refused the worker's key: Invalid API key")
            )
            assert not pid_alive(leader)
        finally:
            worker.reap()
    finally:
        daemon.reap()
