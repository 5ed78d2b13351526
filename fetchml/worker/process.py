"""A job's process group: spawning it, its pid file, stopping it, and leftovers.

The job's program leads its own session and process group (so a signal to
the group reaches everything it started, and a terminal's Ctrl-C does not),
and dies with SIGKILL when the worker's event-loop thread that forked it
exits (PR_SET_PDEATHSIG). What the leader started survives a worker killed
with SIGKILL, so `<job dir>/pid` holds the leader's pid and start time, and
a worker started on the same directory kills such leftovers first: the
processes of that session carrying the job's FETCHML_JOB_ID in their
environment and started no earlier than the leader (a reused pid is never
taken for the job's).
"""

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

PID_FILE = "pid"
JOB_ID_ENV = "FETCHML_JOB_ID"
PR_SET_PDEATHSIG = 1
POLL_S = 0.05
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup(parent: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: die with the worker."""

    def setup() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time in clock ticks since boot) from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[3]), int(fields[19])


def exit_line(returncode: int) -> str:
    """ "exit code 3", or "killed by signal 9 (SIGKILL)"."""
    if returncode >= 0:
        return f"exit code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"killed by signal {number}"
    return f"killed by signal {number} ({name})"


class JobProcess:
    """The leader of a job's process group (its pid is the group's and the session's id)."""

    def __init__(self, proc: asyncio.subprocess.Process, pid_file: Path) -> None:
        self.proc = proc
        self.pid_file = pid_file

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        stdout: int,
        pid_file: Path,
    ) -> "JobProcess":
        """Start `argv` (no shell), stdout to the descriptor `stdout`, stderr to a pipe.
        Call from the event loop's thread (PDEATHSIG follows the forking thread).
        OSError when it cannot start."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_child_setup(os.getpid()),
        )
        job = cls(proc, pid_file)
        stat = proc_stat(proc.pid)
        temp = pid_file.with_name(PID_FILE + ".tmp")
        temp.write_text(f"{proc.pid} {stat[1] if stat else 0}\n")
        temp.replace(pid_file)
        return job

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self) -> int:
        """The leader's return code (negative: the signal that killed it)."""
        return await self.proc.wait()

    def signal_group(self, sig: int) -> bool:
        """Send `sig` to the whole group; False when nothing is left in it."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    async def stop(self, grace: float) -> None:
        """SIGTERM to the group; SIGKILL to what is left of it after `grace` seconds."""
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not self.signal_group(0):
                return
            await asyncio.sleep(POLL_S)
        if self.signal_group(signal.SIGKILL):
            logger.info("process group %d: SIGKILL after %g s", self.pid, grace)

    def finish(self) -> None:
        """Once the leader is gone: kill whatever it left in its group, drop the pid file."""
        self.signal_group(signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _is_jobs(pid: int, session: int, start: int, marker: bytes) -> bool:
    stat = proc_stat(pid)
    if stat is None or stat[0] != session or stat[1] < start:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return marker in environ.split(b"\0")


def kill_leftovers(job_dir: Path) -> int:
    """SIGKILL what a previous worker left of the job in `job_dir`; how many processes."""
    pid_file = job_dir / PID_FILE
    try:
        leader, start = (int(word) for word in pid_file.read_text().split())
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return 0
    marker = f"{JOB_ID_ENV}={job_dir.name}".encode()
    killed: set[int] = set()
    for _ in range(10):  # again, for what was forked meanwhile (the killed are zombies)
        found = [pid for pid in _pids() if _is_jobs(pid, leader, start, marker)]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(found)
    pid_file.unlink(missing_ok=True)
    return len(killed)
