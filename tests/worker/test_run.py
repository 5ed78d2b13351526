"""`fetchml worker` runs queued jobs: environment, results, output, slots and GPUs, and the
checks it makes at start. A real daemon, the worker and its jobs as real processes."""

import json
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from fetchml.client import cli
from fetchml.client.connection import Client
from tests.support.config import CUSTOM_USERS, custom_config
from tests.support.experiments import commit_of
from tests.support.inproc import DaemonFactory
from tests.support.keys import ALICE_KEY, WORKER_KEY
from tests.support.worker import StartWorker, WorkerProcess, output_log, wait_jobs


def python(source: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(source)]


async def test_a_job_runs_with_its_environment_and_logs_into_its_run(
    admin: Client, start_worker: StartWorker, workdir: Path
) -> None:
    program = python(
        """
        import json, os
        from fetchml import MetricLogger
        names = ("FETCHML_JOB_ID", "FETCHML_RUN_ID", "FETCHML_API_KEY", "CUDA_VISIBLE_DEVICES", "GREETING")
        print(json.dumps({n: os.environ.get(n) for n in names} | {"cwd": os.getcwd()}))
        with MetricLogger() as logger:  # no configuration: the worker's environment
            for step in range(3):
                logger.log("loss", 1.0 / (step + 1), step=step)
        """
    )
    job = await admin.queue_job(
        "train", commit_of("env"), spec={"command": program, "env": {"GREETING": "hello"}}
    )
    worker = start_worker("--gpus", "3")
    done = (await wait_jobs(admin, [job.id]))[job.id]
    assert (done.status_name, done.error, done.worker_id) == ("completed", None, "box"), (
        worker.log()
    )
    line = next(x for x in output_log(workdir, job).splitlines() if x.startswith("{"))
    assert json.loads(line) == {
        "FETCHML_JOB_ID": job.id,
        "FETCHML_RUN_ID": job.commit_id,
        "FETCHML_API_KEY": WORKER_KEY,
        "CUDA_VISIBLE_DEVICES": "3",
        "GREETING": "hello",
        "cwd": str(workdir.resolve() / job.id),
    }
    points = await admin.query(job.commit_id, name="loss")
    assert [(p.step, p.value) for p in points] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert f"claimed job {job.id}" in worker.log()


async def test_a_failing_job_reports_its_exit_and_stderr_tail_and_its_output_reaches_the_run(
    admin: Client, start_worker: StartWorker, workdir: Path
) -> None:
    program = python(
        """
        import sys
        print("out-start " + "é" * 12000, flush=True)  # 24 KB: the run keeps the last 16 KiB
        print("OUT-END", flush=True)
        sys.stderr.write("e" * 6000 + "ERR-END\\n")
        sys.exit(3)
        """
    )
    job = await admin.queue_job("fails", commit_of("exit3"), spec={"command": program})
    start_worker()
    done = (await wait_jobs(admin, [job.id]))[job.id]
    assert done.status_name == "failed"
    assert done.error is not None and done.error.startswith("exit code 3\neee")
    assert done.error.endswith("ERR-END") and len(done.error.encode()) <= 4096
    log = output_log(workdir, job)
    assert "out-start" in log and "OUT-END" in log and "ERR-END" in log
    run = (await admin.get_experiment(job.commit_id)).run
    assert run is not None
    output = run["output"]
    assert "OUT-END" in output and "ERR-END" in output and "exit code 3" in output
    assert 16_000 < len(output.encode()) <= 16_384 and "out-start" not in output
    assert output.replace("é", "").count("\ufffd") == 0  # cut at a character boundary


async def test_jobs_that_cannot_start_fail_at_once_with_the_reason(
    admin: Client, start_worker: StartWorker, workdir: Path
) -> None:
    no_spec = await admin.queue_job("bare", commit_of("bare"))
    missing = await admin.queue_job(
        "missing", commit_of("missing"), spec={"command": ["/nonexistent/train"]}
    )
    bad_dir = await admin.queue_job(
        "dir", commit_of("dir"), spec={"command": ["true"], "workdir": "/nonexistent/dir"}
    )
    blocked = await admin.queue_job("blocked", commit_of("blocked"), spec={"command": ["true"]})
    workdir.mkdir()
    (workdir / blocked.id).write_text("a file where the job's directory goes")
    worker = start_worker()
    jobs = await wait_jobs(admin, [no_spec.id, missing.id, bad_dir.id, blocked.id])
    assert {j.status_name for j in jobs.values()} == {"failed"}, worker.log()
    assert jobs[no_spec.id].error == "no command"
    assert jobs[missing.id].error == (
        "cannot start /nonexistent/train in "
        f"{worker.workdir.resolve() / missing.id}: No such file or directory"
    )
    error = jobs[bad_dir.id].error
    assert error is not None and "/nonexistent/dir: No such file or directory" in error
    assert jobs[blocked.id].error == f"cannot start: {workdir.resolve() / blocked.id}: File exists"


async def test_two_slots_run_two_jobs_at_once_each_on_its_own_gpu(
    admin: Client, start_worker: StartWorker, tmp_path: Path
) -> None:
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    program = python(
        f"""
        import os, pathlib, sys, time
        here = pathlib.Path({str(meeting)!r})
        (here / os.environ["CUDA_VISIBLE_DEVICES"]).write_text(os.environ["FETCHML_JOB_ID"])
        deadline = time.monotonic() + 20
        while len(list(here.iterdir())) < 2:  # the other job must be running too
            if time.monotonic() > deadline:
                sys.exit("alone")
            time.sleep(0.02)
        """
    )
    first = await admin.queue_job("a", commit_of("gpu-a"), spec={"command": program})
    second = await admin.queue_job("b", commit_of("gpu-b"), spec={"command": program})
    worker = start_worker("--concurrency", "2", "--gpus", "0,1")
    jobs = await wait_jobs(admin, [first.id, second.id])
    assert [j.status_name for j in jobs.values()] == ["completed"] * 2, worker.log()
    assert {p.name: p.read_text() for p in meeting.iterdir()} in (
        {"0": first.id, "1": second.id},
        {"0": second.id, "1": first.id},
    )
    assert {j.worker_id for j in jobs.values()} == {"box/0", "box/1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "3", "--gpus", "0,1"], "--concurrency 3 is more than the 2 GPU(s)"),
        (["--gpus", "0,,1"], "expected distinct GPU ids"),
        (["--gpus", "0,0"], "expected distinct GPU ids"),
        (["--name", "a/b"], "--name must be"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--api-key", "k", "worker", *args]) == 2
    assert message in capsys.readouterr().err


async def test_start_checks_the_key_and_the_directory(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = await start_daemon(custom_config(tmp_path))
    workdir, logs = tmp_path / "jobs", tmp_path / "logs"
    logs.mkdir()

    def start(key: str, name: str) -> WorkerProcess:
        return WorkerProcess(daemon.url, key, workdir, logs / f"{name}.log", "--name", name)

    researcher = start(ALICE_KEY, "alice")
    assert await researcher.wait_exit() == 1
    assert researcher.log().strip().splitlines() == [
        "error: user alice (role researcher) may not claim jobs: a worker's key needs "
        "jobs:claim (the built-in role `worker` has it)"
    ]
    runner = start(CUSTOM_USERS["rita"][1], "rita")  # jobs:claim, write scope own
    try:
        await runner.wait_log("heartbeat every")
        assert "write scope 'own'" in runner.log()
        second = start(WORKER_KEY, "second")
        assert await second.wait_exit() == 1
        assert f"error: --workdir {workdir} is in use by another worker" in second.log()
        runner.signal(signal.SIGTERM)
        assert await runner.wait_exit() == 0, runner.log()
    finally:
        runner.reap()
