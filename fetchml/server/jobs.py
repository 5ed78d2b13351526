"""The job queue behind QUEUE_JOB, STATUS, CANCEL_JOB, CLAIM_JOB and UPDATE_JOB: the
`Job`, the `JobQueue` contract and what its stores share.

`SqliteJobQueue` (jobs_sqlite.py) keeps jobs in one SQLite file; in cluster mode
`RedisJobQueue` (jobs_redis.py) keeps the same contract in the cluster's Redis
(app.open_queue chooses). Queue order: higher priority first, then insertion order
(FIFO). Completed, failed and cancelled jobs that ended more than `keep_days` ago are
deleted.

Leases: a running job queued with a spec whose max(started_at, heartbeat_at) is
more than `lease_s` old has lost its worker. Before every operation such jobs get
`attempts` + 1 and are queued again in their old place, or fail "lease expired"
once `attempts` reaches the spec's `max_attempts`.
"""

import re
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any, Protocol

from fetchml.protocol import shapes
from fetchml.protocol.enums import JobStatus
from fetchml.protocol.rules import PRIORITY_MAX, PRIORITY_MIN

from .errors import InvalidRequest

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
CANCEL_DENIED = "You can only cancel your own jobs"
CLAIMED_DENIED = "job claimed by another user"
REASSIGNED = "job reassigned"
LEASE_EXPIRED = "lease expired"
MAX_ERROR_BYTES = 4096
"""UPDATE_JOB's error text is kept to this many bytes (cut at a UTF-8 boundary)."""
PURGE_INTERVAL_S = 3600
"""Old finished jobs are deleted at open and then at most this often."""
DAY_S = 86400


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    id: str
    job_name: str
    args: str = ""
    status: JobStatus
    priority: int
    created_at: int
    started_at: int | None = None
    ended_at: int | None = None
    worker_id: str | None = None
    error: str | None = None
    datasets: tuple[str, ...] = ()
    commit_id: str
    user: str
    claimed_by: str | None = None
    """The user whose key claimed the job (None until claimed, cleared on requeue)."""
    spec: dict[str, Any] | None = None
    """QUEUE_JOB_SPEC's spec with its defaults filled in (None for QUEUE_JOB)."""
    attempts: int = 0
    """How many leases of this job expired."""
    heartbeat_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The `job` JSON object of PROTOCOL.md section 4."""
        return shapes.job(**{name: getattr(self, name) for name in _FIELDS})


_FIELDS = tuple(f.name for f in fields(Job))

MIN_JOB_JSON_BYTES = len(
    shapes.dumps(
        Job(
            id="0" * 36,
            job_name="",
            status=JobStatus.QUEUED,
            priority=0,
            created_at=0,
            commit_id="",
            user="",
        ).to_json()
    )
)
"""No job's compact JSON is shorter: STATUS reads no more jobs than could fit."""


class JobQueue(Protocol):
    """What the daemon needs from a job store. `user=None` means scope `all`."""

    async def enqueue(
        self,
        *,
        job_name: str,
        commit_id: str,
        user: str,
        priority: int,
        args: str = "",
        spec: dict[str, Any] | None = None,
    ) -> Job:
        """Queue a job; `args` is a spec's text, `spec` its parse (protocol/jobspec.py)."""
        ...

    async def list_jobs(self, user: str | None, limit: int | None = None) -> list[Job]:
        """The user's jobs (every job for None), newest first, ties later insertion first;
        at most `limit` of them."""
        ...

    async def count_jobs(self, user: str | None) -> int:
        """How many jobs `list_jobs` would return without a limit."""
        ...

    async def queue_length(self) -> int:
        """Queued jobs of all users."""
        ...

    async def cancel(self, job_name: str, user: str | None) -> int:
        """Cancel the queued/running jobs of that name the caller may update, or only the job
        whose ID it is; return the count."""
        ...

    async def claim(
        self, worker_id: str, user: str | None = None, *, claimer: str | None = None
    ) -> Job | None:
        """Atomically take the next queued job (highest priority, then FIFO); with `user`,
        only that user's jobs (scope own). `claimer` becomes the job's `claimed_by`."""
        ...

    async def update(
        self,
        job_id: str,
        status: JobStatus,
        error: str,
        user: str | None,
        *,
        caller: str | None = None,
        worker_id: str | None = None,
    ) -> Job:
        """A worker's report on a running job: RUNNING (a heartbeat), COMPLETED or FAILED.
        With `caller` (a user without `*`), a job claimed by another user is
        PERMISSION_DENIED; with `worker_id`, a job now held by another worker (or by none)
        is INVALID_REQUEST "job reassigned"."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def close(self) -> None: ...


def new_job(
    job_name: str, commit_id: str, user: str, priority: int, args: str, spec: dict[str, Any] | None
) -> Job:
    """A queued job with a fresh ID, created now; INVALID_REQUEST for a bad priority or
    commit ID."""
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidRequest(f"priority must be {PRIORITY_MIN}..{PRIORITY_MAX}, got {priority}")
    if not COMMIT_RE.fullmatch(commit_id):
        raise InvalidRequest("commit_id must be 40 lowercase hex characters")
    return Job(
        id=str(uuid.uuid4()),
        job_name=job_name,
        args=args,
        status=JobStatus.QUEUED,
        priority=priority,
        created_at=_now(),
        commit_id=commit_id,
        user=user,
        spec=spec,
    )


def cap_error(text: str) -> str:
    """The first MAX_ERROR_BYTES bytes of `text` in UTF-8, never cutting a character."""
    raw = text.encode()
    if len(raw) <= MAX_ERROR_BYTES:
        return text
    return raw[:MAX_ERROR_BYTES].decode(errors="ignore")
