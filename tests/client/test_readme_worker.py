"""The README's "Jobs on a worker" tour, run for real: the queue line, `fetchml worker` as a
subprocess (the second terminal), then `fetchml jobs` and `fetchml show`."""

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from fetchml.client import Client
from fetchml.protocol.enums import JobStatus
from tests.support.daemon import poll
from tests.support.inproc import Daemon
from tests.support.keys import ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def block(heading: str, language: str) -> str:
    """The first fenced block of `language` after a heading line ending in `heading`."""
    section = re.split(rf"^#+ {re.escape(heading)}\n", README, maxsplit=1, flags=re.M)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block under {heading!r}"
    return match.group(1)


async def shell(script: str, env: dict[str, str], cwd: Path) -> str:
    """`script` in bash, with `fetchml` the CLI of this checkout; its stdout."""
    fetchml = f'fetchml() {{ "{sys.executable}" -m fetchml.client.cli "$@"; }}\n'
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", "set -euo pipefail\n" + fetchml + script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{script}: {done.stderr}"
    return done.stdout


async def test_jobs_on_a_worker_tour(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(block("Log metrics from a training script", "python"))
    lines = [line.split("  #")[0].strip() for line in block("Jobs on a worker", "sh").splitlines()]
    queue, worker, *rest = [line for line in lines if line]
    assert queue.startswith("fetchml queue ") and worker == "fetchml worker"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python`
        "FETCHML_URL": daemon.url,
        "FETCHML_API_KEY": ADMIN_KEY,
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "share"),  # the worker's job directories
    }
    out = await shell(queue, env, tmp_path)
    match = re.search(r"^run ([0-9a-f]{40}) \(new\)", out, re.M)
    assert match, out
    run_id = match.group(1)

    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fetchml.client.cli", *shlex.split(worker)[1:]],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:

            async def ended() -> bool:
                (job,) = (await c.status()).jobs
                return job.status not in (JobStatus.QUEUED, JobStatus.RUNNING)

            for _ in range(600):
                if await ended() or proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            (job,) = (await c.status()).jobs
            assert job.status is JobStatus.COMPLETED, f"{job}\n{log.read_text()}"
            records = await c.query(run_id)
        proc.send_signal(signal.SIGTERM)
        await poll(lambda: proc.poll() is not None, "the worker to stop")
        assert proc.returncode == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len([r for r in records if r.name == "loss"]) == 1000

    out = await shell("\n".join(rest), env, tmp_path)
    print(out)
    jobs, show = out.split("\ncommit ", 1)
    assert re.search(rf"^{job.id[:8]} +resnet-50 +completed +5 +0/1 ", jobs, re.M), jobs
    assert show.startswith(f"  {run_id}\n")
    assert "\nname     resnet-50\n" in show and "\nstatus   finished\n" in show
    assert "\nrecords  1020\n" in show
