"""One claimed job, from spawn to the result the daemon records.

While the program runs: a heartbeat (UPDATE_JOB running with the slot's
worker_id) every `heartbeat_s`; the end of output.log into the run
document's `output` when it grew, at most every TAIL_S seconds; the spec's timeout;
the worker's shutdown. The job is stopped (SIGTERM to its group, SIGKILL
after the grace) when the heartbeat is answered JOB_CANCELLED, when it says
the job is no longer this slot's (reassigned, not running, gone), at the
timeout, or when the worker stops and the grace is over. Then the output
tail goes to the run once more, and the result is delivered, retried until
the daemon takes it or says the job is no longer ours. A cancelled job gets
no result (the daemon already has one), a lost one nothing at all.
"""

import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from fetchml.client.errors import RETRYABLE, FetchmlError
from fetchml.client.models import Job
from fetchml.client.settings import KEY_ENV, RUN_ID_ENV, URL_ENV
from fetchml.protocol.enums import ErrorCode, JobStatus

from .link import Link, backoff
from .output import OutputLog, error_text
from .process import JOB_ID_ENV, JobProcess, exit_line

logger = logging.getLogger(__name__)

TAIL_S = 10.0
"""The run's `output` is sent at most this often while the job runs..."""
TAIL_POLL_S = 1.0
"""...and when output.log has grown, checked this often (so the first lines show soon)."""
DRAIN_S = 2.0
"""How long stderr is read after the job's group is gone (a process that left the
group may still hold the pipe)."""
OUTPUT_LOG = "output.log"
LOST_CODES = frozenset(
    {ErrorCode.INVALID_REQUEST, ErrorCode.JOB_NOT_FOUND, ErrorCode.PERMISSION_DENIED}
)
"""Heartbeat answers meaning the job is no longer this slot's (reassigned, not running,
gone, claimed by another user)."""


class Shutdown:
    """The worker's stop request, shared by its slots."""

    def __init__(self) -> None:
        self.requested = anyio.Event()
        self.signal = ""

    def request(self, signal_name: str) -> None:
        self.signal = signal_name
        self.requested.set()


@dataclass(frozen=True, slots=True)
class Setup:
    """What every job of this worker shares."""

    link: Link
    workdir: Path
    grace: float
    heartbeat_s: float
    shutdown: Shutdown


@dataclass(frozen=True, slots=True)
class Slot:
    worker_id: str
    gpus: tuple[str, ...]
    """The slot's share of --gpus (CUDA_VISIBLE_DEVICES); empty without --gpus."""


def job_env(job: Job, slot: Slot, setup: Setup, spec: dict[str, Any]) -> dict[str, str]:
    """The worker's environment, the spec's `env`, then the job's own variables."""
    settings = setup.link.settings
    env = {**os.environ, **spec["env"]}
    env |= {
        URL_ENV: settings.url_list,
        KEY_ENV: settings.api_key,
        RUN_ID_ENV: job.commit_id,
        JOB_ID_ENV: job.id,
    }
    if slot.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
    return env


class JobRun:
    def __init__(self, job: Job, slot: Slot, setup: Setup) -> None:
        self.job = job
        self.slot = slot
        self.setup = setup
        self.why: str | None = None
        """Why the worker stopped the job (None: it ended by itself)."""
        self.lost = False
        self._stopped: anyio.Event | None = None
        self._tasks: anyio.abc.TaskGroup | None = None

    async def run(self) -> None:
        spec = self.job.spec
        if spec is None:
            logger.warning("job %s has no spec: failed", self.job.id)
            await self._deliver(JobStatus.FAILED, "no command")
            return
        job_dir = self.setup.workdir / self.job.id
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            out = OutputLog(job_dir / OUTPUT_LOG)
        except OSError as exc:
            error = f"cannot start: {job_dir}: {exc.strerror or exc}"
            logger.warning("job %s: %s", self.job.id, error)
            await self._deliver(JobStatus.FAILED, error)
            return
        try:
            await self._run(spec, job_dir, out)
        finally:
            out.close()

    async def _run(self, spec: dict[str, Any], job_dir: Path, out: OutputLog) -> None:
        job, command = self.job, spec["command"]
        out.note(f"job {job.id} attempt {job.attempts + 1} on {self.slot.worker_id}")
        cwd = job_dir / Path(spec["workdir"]).expanduser() if spec["workdir"] else job_dir
        try:
            proc = await JobProcess.spawn(
                command,
                env=job_env(job, self.slot, self.setup, spec),
                cwd=cwd,
                stdout=out.fd,
                pid_file=job_dir / "pid",
            )
        except OSError as exc:
            error = f"cannot start {shlex.join(command)} in {cwd}: {exc.strerror or exc}"
            logger.warning("job %s: %s", job.id, error)
            out.note(error)
            await self._send_output(out)
            await self._deliver(JobStatus.FAILED, error)
            return
        shown = shlex.join(command).replace("\n", "\\n")
        logger.info("job %s started: pid %d, %.200s", job.id, proc.pid, shown)
        try:
            returncode = await self._supervise(proc, out, spec["timeout_s"])
        finally:
            proc.finish()
            # Reap the leader (even when cancelled): its transport must close in this loop,
            # not be collected after the loop is gone (a traceback at the worker's exit).
            with anyio.CancelScope(shield=True), anyio.move_on_after(DRAIN_S):
                await proc.wait()
        await self._finish(returncode, out, spec["timeout_s"])

    async def _supervise(self, proc: JobProcess, out: OutputLog, timeout_s: int) -> int:
        """Run until the leader exits and any stop sequence is over; its return code."""
        assert proc.proc.stderr is not None
        pumped = anyio.Event()
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._pump, proc, out, pumped)
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._heartbeat, proc, out)
                tasks.start_soon(self._tail_updates, out)
                tasks.start_soon(self._on_shutdown, proc, out)
                if timeout_s > 0:
                    tasks.start_soon(self._timeout, proc, out, timeout_s)
                returncode = await proc.wait()
                if self._stopped is not None:
                    await self._stopped.wait()
                tasks.cancel_scope.cancel()
            proc.finish()
            with anyio.move_on_after(DRAIN_S):
                await pumped.wait()
            outer.cancel_scope.cancel()
        return returncode

    async def _pump(self, proc: JobProcess, out: OutputLog, done: anyio.Event) -> None:
        stream = proc.proc.stderr
        assert stream is not None
        try:
            while chunk := await stream.read(65536):
                out.write_stderr(chunk)
        finally:
            done.set()

    def _stop(self, proc: JobProcess, out: OutputLog, why: str, note: str) -> None:
        if self.why is not None:
            return
        self.why = why
        out.note(note)
        logger.info("job %s: %s", self.job.id, note)
        stopped = self._stopped = anyio.Event()

        async def sequence() -> None:
            try:
                await proc.stop(self.setup.grace)
            finally:
                stopped.set()

        assert self._tasks is not None
        self._tasks.start_soon(sequence)

    async def _heartbeat(self, proc: JobProcess, out: OutputLog) -> None:
        job = self.job
        while True:
            await anyio.sleep(self.setup.heartbeat_s)
            try:
                await self.setup.link.call(
                    lambda c: c.update_job(job.id, JobStatus.RUNNING, worker_id=self.slot.worker_id)
                )
            except FetchmlError as exc:
                if exc.code == ErrorCode.JOB_CANCELLED:
                    self._stop(proc, out, "cancelled", "job cancelled: stopping it")
                    return
                if exc.code in LOST_CODES:
                    self.lost = True
                    self._stop(
                        proc, out, "lost", f"job no longer ours ({exc.message}): stopping it"
                    )
                    return
                logger.warning("job %s: heartbeat refused: %s", job.id, exc.message)

    async def _tail_updates(self, out: OutputLog) -> None:
        sent = -1
        while True:
            await anyio.sleep(TAIL_POLL_S)
            size = out.size()
            if size != sent:
                sent = size
                await self._send_output(out)
                await anyio.sleep(TAIL_S - TAIL_POLL_S)

    async def _timeout(self, proc: JobProcess, out: OutputLog, timeout_s: int) -> None:
        await anyio.sleep(timeout_s)
        self._stop(proc, out, "timeout", f"timeout after {timeout_s} s: stopping the job")

    async def _on_shutdown(self, proc: JobProcess, out: OutputLog) -> None:
        shutdown, grace = self.setup.shutdown, self.setup.grace
        await shutdown.requested.wait()
        await anyio.sleep(grace)
        note = f"worker stopped ({shutdown.signal}; the job outlived the {grace:g} s grace)"
        self._stop(proc, out, "worker stopped", f"{note}: stopping it")

    async def _finish(self, returncode: int, out: OutputLog, timeout_s: int) -> None:
        job, line = self.job, exit_line(returncode)
        out.note(f"job {job.id}: {line}")
        if self.lost:
            logger.info("job %s: %s after it was taken from this worker", job.id, line)
            return
        status, headline = JobStatus.FAILED, line
        if self.why == "timeout":
            headline = f"timeout after {timeout_s} s; {line}"
        elif self.why == "worker stopped":
            grace, signal_name = self.setup.grace, self.setup.shutdown.signal
            headline = (
                f"worker stopped ({signal_name}; still running after the {grace:g} s grace); {line}"
            )
        elif self.why is None and returncode == 0:
            status = JobStatus.COMPLETED
        logger.info("job %s exited: %s", job.id, headline if self.why != "cancelled" else line)
        await self._send_output(out)
        if self.why == "cancelled":
            return  # the daemon has its result
        error = "" if status == JobStatus.COMPLETED else error_text(headline, bytes(out.stderr))
        await self._deliver(status, error)

    async def _send_output(self, out: OutputLog) -> None:
        """The end of output.log as the run's `output` (other keys untouched)."""
        patch = {"output": out.tail()}
        try:
            await self.setup.link.call(lambda c: c.update_run(self.job.commit_id, patch))
        except FetchmlError as exc:
            logger.warning("job %s: output not sent to its run: %s", self.job.id, exc.message)

    async def _deliver(self, status: JobStatus, error: str) -> None:
        """UPDATE_JOB with the result, again after transient errors until it is taken."""
        job, attempt = self.job, 0
        while True:
            try:
                await self.setup.link.call(
                    lambda c: c.update_job(job.id, status, error, worker_id=self.slot.worker_id)
                )
            except FetchmlError as exc:
                if exc.code not in RETRYABLE:
                    logger.warning("job %s: result not recorded: %s", job.id, exc.message)
                    return
                attempt += 1
                delay = backoff(attempt, 1.0, 30.0)
                logger.warning("job %s: result: %s; again in %.1f s", job.id, exc.message, delay)
                await anyio.sleep(delay)
            else:
                logger.info("job %s: %s recorded", job.id, status.name.lower())
                return
