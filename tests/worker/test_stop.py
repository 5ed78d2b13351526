"""Stopping jobs: cancel, timeout, the worker's own shutdown, and what a worker killed
with SIGKILL leaves behind. Real processes; pids are checked in /proc."""

import asyncio
import signal
import sys
import textwrap
import time
from pathlib import Path

from fetchml.client.connection import Client
from tests.support.daemon import poll
from tests.support.experiments import commit_of
from tests.support.worker import StartWorker, file_text, output_log, pid_alive, wait_jobs

GRACE_S = 1.0


def python(source: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(source)]


def stubborn_child(pid_file: Path, term_file: Path) -> list[str]:
    """A job whose child survives SIGTERM (noting it got one); the leader just sleeps."""
    child = (
        "import os, pathlib, signal, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: pathlib.Path({str(term_file)!r}).write_text('x'))\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "while True: time.sleep(1)\n"
    )
    return python(
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {child!r}])
        time.sleep(600)
        """
    )


async def test_cancel_stops_the_whole_group_and_sigkills_what_ignores_sigterm(
    admin: Client, start_worker: StartWorker, tmp_path: Path, workdir: Path
) -> None:
    pid_file, term_file = tmp_path / "child.pid", tmp_path / "child.term"
    job = await admin.queue_job(
        "stubborn", commit_of("cancel"), spec={"command": stubborn_child(pid_file, term_file)}
    )
    worker = start_worker("--grace", str(GRACE_S))
    child = int(await file_text(pid_file))
    assert await admin.cancel_job(job.id) == 1
    cancelled = time.monotonic()
    await poll(lambda: not pid_alive(child), "the child to be killed", timeout=20)
    took = time.monotonic() - cancelled
    print(f"cancel -> child gone: {took:.2f} s (heartbeat 1 s + grace {GRACE_S:g} s)")
    assert term_file.exists(), "the child got SIGTERM first"
    assert took >= GRACE_S
    assert (await wait_jobs(admin, [job.id]))[job.id].status_name == "cancelled"
    await worker.wait_log(f"job {job.id} exited: killed by signal")
    assert "job cancelled: stopping it" in output_log(workdir, job)

    async def output() -> str:
        run = (await admin.get_experiment(job.commit_id)).run
        return "" if run is None else str(run["output"])

    deadline = time.monotonic() + 30
    while "job cancelled: stopping it" not in await output():
        assert time.monotonic() < deadline, "the run's output never told of the cancel"
        await asyncio.sleep(0.05)
    assert "job cancelled" in worker.log()
    assert not (workdir / job.id / "pid").exists()


async def test_a_job_past_its_timeout_is_stopped_and_failed(
    admin: Client, start_worker: StartWorker
) -> None:
    program = python("import sys, time; print('sleeping', file=sys.stderr); time.sleep(600)")
    job = await admin.queue_job(
        "slow", commit_of("timeout"), spec={"command": program, "timeout_s": 1}
    )
    start_worker("--grace", "5")
    done = (await wait_jobs(admin, [job.id]))[job.id]
    assert done.status_name == "failed"
    assert done.error == "timeout after 1 s; killed by signal 15 (SIGTERM)\nsleeping"


async def test_sigterm_lets_jobs_finish_within_the_grace_then_stops_the_rest(
    admin: Client, start_worker: StartWorker, tmp_path: Path, workdir: Path
) -> None:
    def program(seconds: float) -> list[str]:
        return python(f"import time; print('up', flush=True); time.sleep({seconds})")

    quick = await admin.queue_job("quick", commit_of("quick"), spec={"command": program(1.5)})
    long = await admin.queue_job("long", commit_of("long"), spec={"command": program(600)})
    worker = start_worker("--concurrency", "2", "--grace", "3")
    await poll(
        lambda: all("up" in output_log(workdir, j).split() for j in (quick, long)),
        "both jobs to run",
    )
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0, worker.log()
    jobs = await wait_jobs(admin, [quick.id, long.id], timeout=1)
    assert jobs[quick.id].status_name == "completed"
    assert (jobs[long.id].status_name, jobs[long.id].error) == (
        "failed",
        "worker stopped (SIGTERM; still running after the 3 s grace); "
        "killed by signal 15 (SIGTERM)",
    )


async def test_a_restarted_worker_kills_what_its_killed_predecessor_left(
    admin: Client, start_worker: StartWorker, tmp_path: Path, workdir: Path
) -> None:
    pid_file, term_file = tmp_path / "child.pid", tmp_path / "child.term"
    job = await admin.queue_job(
        "orphan", commit_of("orphan"), spec={"command": stubborn_child(pid_file, term_file)}
    )
    first = start_worker()
    child = int(await file_text(pid_file))
    leader = int((workdir / job.id / "pid").read_text().split()[0])
    first.signal(signal.SIGKILL)
    await first.wait_exit()
    await poll(lambda: not pid_alive(leader), "PDEATHSIG to kill the job's leader")
    assert pid_alive(child), "the leader's child outlives it"
    second = start_worker()
    await second.wait_log("heartbeat every")
    assert not pid_alive(child)
    assert f"killed 1 process(es) left running by a previous worker for job {job.id}" in (
        second.log()
    )
    assert not (workdir / job.id / "pid").exists()


async def test_a_second_signal_kills_the_jobs_at_once_and_exits_1(
    admin: Client, start_worker: StartWorker, workdir: Path
) -> None:
    program = python("import time; print('up', flush=True); time.sleep(600)")
    job = await admin.queue_job("held", commit_of("second"), spec={"command": program})
    worker = start_worker("--grace", "600")
    await poll(lambda: "up" in output_log(workdir, job).split(), "the job to run")
    leader = int((workdir / job.id / "pid").read_text().split()[0])
    worker.signal(signal.SIGINT)
    await worker.wait_log("SIGINT: no more claims")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 1
    print(f"second signal -> worker gone: {time.monotonic() - started:.2f} s")
    assert not pid_alive(leader)
    assert "SIGTERM again: killing the running jobs" in worker.log()
    left = (await wait_jobs(admin, [job.id], states=("running",)))[job.id]
    assert left.error is None  # no result: its lease gives it back to the queue


async def test_what_a_finished_job_left_in_its_group_is_killed(
    admin: Client, start_worker: StartWorker, tmp_path: Path
) -> None:
    pid_file = tmp_path / "background.pid"
    background = f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(600)"
    program = python(
        f"""
        import pathlib, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {background!r}], stderr=subprocess.DEVNULL)
        while not pathlib.Path({str(pid_file)!r}).exists():
            time.sleep(0.01)
        """
    )
    job = await admin.queue_job("leaves", commit_of("leaves"), spec={"command": program})
    start_worker()
    assert (await wait_jobs(admin, [job.id]))[job.id].status_name == "completed"
    assert not pid_alive(int(pid_file.read_text()))
