"""The job queue of a cluster: `RedisJobQueue` keeps jobs in the cluster's Redis with the
contract of `SqliteJobQueue` (jobs_sqlite.py). Every operation is one Lua script (jobs_lua.py), so
it is atomic against every node.

While Redis is unreachable every call raises ServiceUnavailable at once (or after
SOCKET_TIMEOUT_S when Redis stalls); redis-py connects again on the next call once Redis is
back, and a dropped connection is made again within the call.
"""

import json
import logging
from dataclasses import fields
from typing import Any, NoReturn, Self
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fetchml.protocol.enums import UPDATABLE_JOB_STATUSES, JobStatus

from . import jobs
from .errors import (
    DatabaseError,
    InvalidRequest,
    JobCancelled,
    JobNotFound,
    PermissionDenied,
    ServerError,
    ServiceUnavailable,
)
from .jobs import CANCEL_DENIED, CLAIMED_DENIED, REASSIGNED, Job, cap_error
from .jobs_lua import CANCEL, CLAIM, COUNT, ENQUEUE, GET, LIST, PURGE, UPDATE, Script

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 5.0
"""A call to an unreachable or stalled Redis fails after this long, never hangs."""

_INTS = frozenset(
    ("status", "priority", "created_at", "started_at", "ended_at", "attempts", "heartbeat_at")
)
_JSON = frozenset(("datasets", "spec"))
_FIELDS = tuple(f.name for f in fields(Job))


def _opt(value: str | None) -> str:
    """None as "", any string (even "") with a leading "=" (Lua's `opt` undoes it)."""
    return "" if value is None else "=" + value


def _encode(job: Job) -> list[str]:
    out: list[str] = []
    for name in _FIELDS:
        value = getattr(job, name)
        if value is None:
            continue
        if name in _JSON:
            out += [name, json.dumps(list(value) if name == "datasets" else value)]
        else:
            out += [name, str(int(value)) if name in _INTS else str(value)]
    return out


def _decode(flat: list[str]) -> Job:
    raw = dict(zip(flat[::2], flat[1::2], strict=True))
    values: dict[str, Any] = {}
    for name in _FIELDS:
        text = raw.get(name)
        if text is None:
            continue
        values[name] = int(text) if name in _INTS else json.loads(text) if name in _JSON else text
    values["status"] = JobStatus(values["status"])
    values["datasets"] = tuple(values.get("datasets", ()))
    return Job(**values)


_REFUSALS: dict[str, tuple[type[ServerError], str]] = {
    "notfound": (JobNotFound, "job {0} not found"),
    "user": (PermissionDenied, "You can only update your own jobs"),
    "claimed": (PermissionDenied, CLAIMED_DENIED),
    "cancelled": (JobCancelled, "job {0} was cancelled"),
    "reassigned": (InvalidRequest, REASSIGNED),
    "notrunning": (InvalidRequest, "job {0} is not running (it is {1})"),
    "finished": (JobNotFound, "job {0} is {1}, not queued or running"),
    "noname": (JobNotFound, "no queued or running job named {0!r}"),
    "denied": (PermissionDenied, CANCEL_DENIED),
}
"""A script's refusal {"!", kind[, status]}: the error and its message (the same as
SqliteJobQueue's) of the job ID or name {0} and the job's status {1}."""


def _refuse(answer: list[str], target: str) -> NoReturn:
    error, message = _REFUSALS[answer[1]]
    status = JobStatus(int(answer[2])).name.lower() if len(answer) > 2 else ""
    raise error(message.format(target, status))


def _where(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, without its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


class RedisJobQueue:
    """JobQueue in Redis; open it with `await RedisJobQueue.open(url, prefix, ...)`."""

    def __init__(
        self, client: "aioredis.Redis", url: str, prefix: str, keep_days: float, lease_s: float
    ) -> None:
        self._client: aioredis.Redis | None = client
        self._where = _where(url)
        self._prefix = prefix
        self._keep_s = int(keep_days * jobs.DAY_S)
        self._lease_s = lease_s
        self._purged_at: int | None = None
        self.reachable: bool | None = None
        """Whether the last call reached Redis (None before the first): for /health."""

    @classmethod
    async def open(
        cls, url: str, prefix: str = "fetchml:", keep_days: float = 90.0, lease_s: float = 0.0
    ) -> Self:
        """Connect lazily (a daemon starts while Redis is down) and delete old finished
        jobs if Redis answers. `lease_s` 0 turns leases off."""
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        queue = cls(client, url, prefix, keep_days, lease_s)
        try:
            await queue._run(COUNT, "queue")
        except ServiceUnavailable as exc:
            logger.warning("%s", exc.message)
        return queue

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

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
        job = jobs.new_job(job_name, commit_id, user, priority, args, spec)
        await self._run(ENQUEUE, job.id, str(priority), *_encode(job))
        return job

    async def list_jobs(self, user: str | None, limit: int | None = None) -> list[Job]:
        flats = await self._run(LIST, _opt(user), str(-1 if limit is None else limit))
        return [_decode(flat) for flat in flats]

    async def count_jobs(self, user: str | None) -> int:
        return int(await self._run(COUNT, "all" if user is None else "user:" + user))

    async def queue_length(self) -> int:
        return int(await self._run(COUNT, "queue"))

    async def get(self, job_id: str) -> Job | None:
        flat = await self._run(GET, job_id)
        return _decode(flat) if flat else None

    async def cancel(self, job_name: str, user: str | None) -> int:
        answer = await self._run(CANCEL, job_name, _opt(user))
        if isinstance(answer, list):
            _refuse(answer, job_name)
        return int(answer)

    async def claim(
        self, worker_id: str, user: str | None = None, *, claimer: str | None = None
    ) -> Job | None:
        flat = await self._run(CLAIM, worker_id, _opt(claimer), _opt(user))
        return _decode(flat) if flat else None

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
        if status not in UPDATABLE_JOB_STATUSES:
            raise InvalidRequest(f"invalid job status {int(status)}: expected 1, 2 or 3")
        args = (str(int(status)), cap_error(error), _opt(user), _opt(caller), _opt(worker_id))
        answer = await self._run(UPDATE, job_id, *args)
        if answer[0] == "!":
            _refuse(answer, job_id)
        return _decode(answer)

    async def _run(self, script: Script, *args: str) -> Any:
        """Run `script` after deleting old finished jobs when the last time was
        PURGE_INTERVAL_S ago; log the leases it expired; return its answer."""
        now = jobs._now()
        if self._purged_at is None or not 0 <= now - self._purged_at < jobs.PURGE_INTERVAL_S:
            before = now - self._keep_s
            deleted = await self._eval(PURGE, now, str(before))
            self._purged_at = now
            if deleted:
                logger.info("deleted %d finished jobs that ended before %d", deleted, before)
        return await self._eval(script, now, *args)

    async def _eval(self, script: Script, now: int, *args: str) -> Any:
        client = self._client
        if client is None:
            raise DatabaseError("job queue is closed")
        deadline = "" if self._lease_s <= 0 else repr(now - self._lease_s)
        try:
            expired, answer = await script(client, [self._prefix, str(now), deadline, *args])
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            message = f"job queue unavailable: Redis at {self._where}: {reason}"
            if self.reachable is not False:
                logger.warning("%s", message)
            self.reachable = False
            raise ServiceUnavailable(message) from exc
        except RedisError as exc:
            logger.exception("job queue: Redis error")
            raise DatabaseError("database error") from exc
        if self.reachable is False:
            logger.warning("job queue: Redis at %s answers again", self._where)
        self.reachable = True
        for job_id, worker, outcome in expired:
            logger.warning("job %s %s: lease expired (worker %s)", job_id, outcome, worker)
        return answer
