"""The worker: its slots, their claims, and its shutdown.

At start it locks its directory (one worker per directory), kills what a
previous worker on it left running, and asks WHOAMI: without jobs:claim it
stops there. Each of the `concurrency` slots owns a fixed share of the GPUs
and claims with its own worker_id (the name alone for one slot, else
`NAME/0`, `NAME/1`, ...). A slot that finds the queue empty waits 1 s, then
2, 4, 8, 10, 10... (with jitter) before asking again; a job resets it. The
first SIGTERM or SIGINT stops the claims and lets the running jobs finish
within the grace (job.py stops them after it); the worker exits 0 once every
result is delivered. A second one kills the jobs at once and exits 1 (their
leases give them back to the queue).
"""

import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from fetchml.client.errors import (
    AuthenticationFailed,
    ConfigurationError,
    FetchmlError,
    PermissionDenied,
)
from fetchml.client.models import Job
from fetchml.client.settings import Settings

from .job import JobRun, Setup, Shutdown, Slot
from .link import KeyRefused, Link, backoff
from .process import kill_leftovers

logger = logging.getLogger(__name__)

IDLE_S = 1.0
MAX_IDLE_S = 10.0
OFF_LEASE_HEARTBEAT_S = 30.0
CLAIM = "jobs:claim"


@dataclass(frozen=True, slots=True)
class Options:
    name: str
    gpus: tuple[str, ...]
    workdir: Path
    concurrency: int
    grace: float


def slots(name: str, gpus: tuple[str, ...], concurrency: int) -> list[Slot]:
    """`concurrency` slots, each with a contiguous share of `gpus` (the first ones get one
    more when they do not divide evenly)."""
    size, extra = divmod(len(gpus), concurrency)
    result, start = [], 0
    for index in range(concurrency):
        count = size + (index < extra)
        worker_id = name if concurrency == 1 else f"{name}/{index}"
        result.append(Slot(worker_id, gpus[start : start + count]))
        start += count
    return result


def heartbeat_interval(lease_s: float) -> float:
    return max(1.0, lease_s / 4) if lease_s > 0 else OFF_LEASE_HEARTBEAT_S


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Hold `<workdir>/.lock` (flock) for the worker's lifetime."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigurationError(f"cannot use --workdir {workdir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(f"--workdir {workdir} is in use by another worker") from None
        yield
    finally:
        os.close(fd)


def kill_all_leftovers(workdir: Path) -> None:
    for entry in sorted(workdir.iterdir()):
        if entry.is_dir() and (killed := kill_leftovers(entry)):
            logger.warning(
                "killed %d process(es) left running by a previous worker for job %s",
                killed,
                entry.name,
            )


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The KeyRefused errors inside (nested) task groups."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        elif isinstance(exc, KeyRefused):
            found.append(exc)
    return found


class Agent:
    def __init__(self, options: Options, settings: Settings) -> None:
        self.options = options
        self.link = Link(settings)
        self.shutdown = Shutdown()
        self.forced = False

    async def run(self) -> int:
        """0 after a clean stop, 1 after a second signal; a refused key raises
        AuthenticationFailed (the jobs are killed)."""
        try:
            return await self._run()
        except KeyRefused as exc:
            refused = str(exc)
        except ExceptionGroup as group:
            found = _leaves(group)
            if not found:
                raise
            refused = str(found[0])
        raise AuthenticationFailed(f"the daemon refused the worker's key: {refused}")

    async def _run(self) -> int:
        options = self.options
        with locked(options.workdir):
            kill_all_leftovers(options.workdir)
            setup = await self._setup()
            try:
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self._signals, outer.cancel_scope)
                    async with anyio.create_task_group() as tasks:
                        for slot in slots(options.name, options.gpus, options.concurrency):
                            tasks.start_soon(self._slot, slot, setup)
                    outer.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.link.close()
        logger.info("worker stopped")
        return 1 if self.forced else 0

    async def _setup(self) -> Setup:
        me = await self.link.call(lambda c: c.whoami())
        if CLAIM not in me.permissions and "*" not in me.permissions:
            raise PermissionDenied(
                f"user {me.user} (role {me.role}) may not claim jobs: a worker's key needs "
                f"{CLAIM} (the built-in role `worker` has it)"
            )
        if me.write_scope != "all":
            logger.warning(
                "write scope %r: the jobs' programs get this key, so they can log only "
                "into runs of user %s (a worker's role needs write scope `all`)",
                me.write_scope,
                me.user,
            )
        lease_s = me.limits.lease_s if me.limits is not None else 0.0
        setup = Setup(
            self.link,
            self.options.workdir.resolve(),
            self.options.grace,
            heartbeat_interval(lease_s),
            self.shutdown,
        )
        logger.info(
            "worker %s as %s: %d slot(s), jobs in %s, heartbeat every %g s (lease %g s)",
            self.options.name,
            me.user,
            self.options.concurrency,
            setup.workdir,
            setup.heartbeat_s,
            lease_s,
        )
        return setup

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                name = signal.Signals(signum).name
                if not self.shutdown.requested.is_set():
                    logger.info(
                        "%s: no more claims; running jobs get %g s to finish",
                        name,
                        self.options.grace,
                    )
                    self.shutdown.request(name)
                else:
                    logger.warning("%s again: killing the running jobs", name)
                    self.forced = True
                    scope.cancel()

    async def _slot(self, slot: Slot, setup: Setup) -> None:
        idle = 0
        while not self.shutdown.requested.is_set():
            job = await self._claim(slot)
            if job is None:
                idle += 1
                with anyio.move_on_after(backoff(idle, IDLE_S, MAX_IDLE_S)):
                    await self.shutdown.requested.wait()
                continue
            idle = 0
            logger.info(
                "%s claimed job %s (%s, attempt %d)",
                slot.worker_id,
                job.id,
                job.job_name,
                job.attempts + 1,
            )
            await JobRun(job, slot, setup).run()

    async def _claim(self, slot: Slot) -> Job | None:
        """The next job, or None: the queue is empty, the claim was refused, or the worker
        is stopping."""
        claimed: list[Job | None] = [None]

        async def claim() -> None:
            try:
                claimed[0] = await self.link.call(lambda c: c.claim_job(slot.worker_id))
            except FetchmlError as exc:
                logger.warning("%s: claim refused: %s", slot.worker_id, exc.message)
            tasks.cancel_scope.cancel()

        async def stop() -> None:
            await self.shutdown.requested.wait()
            tasks.cancel_scope.cancel()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(claim)
            tasks.start_soon(stop)
        return claimed[0]
