"""The job queue of a cluster: `RedisJobQueue` keeps jobs in the cluster's Redis with the
contract of `SqliteJobQueue` (jobs.py).

Every operation is one Lua script (EVALSHA, EVAL when Redis answers NOSCRIPT), so it is
atomic against every node. Each script first expires lost leases, as SqliteJobQueue does
before every operation. Keys, all under the prefix `P`:

- `P job:<id>`: a hash, one field per Job field that is not None, plus `score` (the
  queue position) and `entry` (the member in the listing indexes);
- `P queue` and `P queue:<user>`: queued jobs by score (255 - priority) * 2**44 + seq,
  so higher priority first, then insertion order;
- `P running`: running jobs with a spec by max(started_at, heartbeat_at) (leases);
- `P all` and `P user:<user>`: every job by created_at, member zero-padded seq + id,
  so ties list later insertion first;
- `P name:<job_name>`: IDs of the queued and running jobs of that name;
- `P ended`: finished jobs by ended_at (history retention); `P seq`: the counter.

While Redis is unreachable every call raises ServiceUnavailable; redis-py reconnects on
the next call once Redis is back.
"""

import hashlib
import json
import logging
from dataclasses import fields
from typing import Any, Self, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fetchml.protocol.enums import UPDATABLE_JOB_STATUSES, JobStatus
from fetchml.protocol.rules import PRIORITY_MAX, PRIORITY_MIN

from . import jobs
from .errors import (
    DatabaseError,
    InvalidRequest,
    JobCancelled,
    JobNotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from .jobs import CANCEL_DENIED, CLAIMED_DENIED, COMMIT_RE, REASSIGNED, Job, cap_error

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 5.0
"""A call to an unreachable or stalled Redis fails after this long, never hangs."""

_PRELUDE = """
local P, now, deadline = ARGV[1], ARGV[2], ARGV[3]
local expired = {}
local function jkey(id) return P .. "job:" .. id end
local function finish(id, k, status)
  local name, user = unpack(redis.call("HMGET", k, "job_name", "user"))
  redis.call("ZREM", P .. "queue", id)
  redis.call("ZREM", P .. "queue:" .. user, id)
  redis.call("ZREM", P .. "running", id)
  redis.call("SREM", P .. "name:" .. name, id)
  redis.call("ZADD", P .. "ended", now, id)
  redis.call("HSET", k, "status", status, "ended_at", now)
end
if deadline ~= "" then
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", P .. "running", "-inf", "(" .. deadline)) do
    local k = jkey(id)
    local j = redis.call("HMGET", k, "attempts", "spec", "user", "score", "worker_id")
    local attempts = tonumber(j[1]) + 1
    if attempts >= (cjson.decode(j[2]).max_attempts or 1) then
      finish(id, k, "3")
      redis.call("HSET", k, "attempts", attempts, "error", "lease expired")
      table.insert(expired, {id, j[5], "failed"})
    else
      redis.call("ZREM", P .. "running", id)
      redis.call("HSET", k, "status", "0", "attempts", attempts)
      redis.call("HDEL", k, "worker_id", "started_at", "heartbeat_at", "claimed_by")
      redis.call("ZADD", P .. "queue", j[4], id)
      redis.call("ZADD", P .. "queue:" .. j[3], j[4], id)
      table.insert(expired, {id, j[5], "requeued"})
    end
  end
end
local function opt(s) if s == "" then return nil end return s:sub(2) end
"""

_ENQUEUE = """
local id, prio = ARGV[4], tonumber(ARGV[5])
local seq = redis.call("INCR", P .. "seq")
local score = string.format("%.0f", (255 - prio) * 17592186044416 + seq)
local entry = string.format("%016.0f", seq) .. id
local k = jkey(id)
redis.call("HSET", k, "score", score, "entry", entry, unpack(ARGV, 6))
local name, user, created = unpack(redis.call("HMGET", k, "job_name", "user", "created_at"))
redis.call("ZADD", P .. "queue", score, id)
redis.call("ZADD", P .. "queue:" .. user, score, id)
redis.call("SADD", P .. "name:" .. name, id)
redis.call("ZADD", P .. "all", created, entry)
redis.call("ZADD", P .. "user:" .. user, created, entry)
return {expired, 1}
"""

_CLAIM = """
local worker, claimer, user = ARGV[4], opt(ARGV[5]), opt(ARGV[6])
local id = redis.call("ZRANGE", user and (P .. "queue:" .. user) or (P .. "queue"), 0, 0)[1]
if not id then return {expired, false} end
local k = jkey(id)
redis.call("ZREM", P .. "queue", id)
redis.call("ZREM", P .. "queue:" .. redis.call("HGET", k, "user"), id)
redis.call("HSET", k, "status", "1", "started_at", now, "worker_id", worker)
if claimer then redis.call("HSET", k, "claimed_by", claimer) else redis.call("HDEL", k, "claimed_by") end
if redis.call("HEXISTS", k, "spec") == 1 then redis.call("ZADD", P .. "running", now, id) end
return {expired, redis.call("HGETALL", k)}
"""

_UPDATE = """
local id, status, err = ARGV[4], ARGV[5], ARGV[6]
local user, caller, worker = opt(ARGV[7]), opt(ARGV[8]), opt(ARGV[9])
local k = jkey(id)
local j = redis.call("HMGET", k, "status", "user", "claimed_by", "worker_id", "started_at")
if not j[1] then return {expired, {"!", "notfound"}} end
if user and j[2] ~= user then return {expired, {"!", "user"}} end
if caller and j[3] and j[3] ~= caller then return {expired, {"!", "claimed"}} end
if j[1] == "4" then return {expired, {"!", "cancelled"}} end
if worker and worker ~= j[4] then return {expired, {"!", "reassigned"}} end
if j[1] ~= "1" then return {expired, {"!", "notrunning", j[1]}} end
if status == "1" then
  redis.call("HSET", k, "heartbeat_at", now)
  if redis.call("ZSCORE", P .. "running", id) then
    local held = math.max(tonumber(j[5]), tonumber(now))
    redis.call("ZADD", P .. "running", string.format("%.0f", held), id)
  end
else
  finish(id, k, status)
  if err == "" then redis.call("HDEL", k, "error") else redis.call("HSET", k, "error", err) end
end
return {expired, redis.call("HGETALL", k)}
"""

_CANCEL = """
local target, user = ARGV[4], opt(ARGV[5])
local k = jkey(target)
local status = redis.call("HGET", k, "status")
if status then
  if status ~= "0" and status ~= "1" then return {expired, {"!", "finished", status}} end
  if user and redis.call("HGET", k, "user") ~= user then return {expired, {"!", "denied"}} end
  finish(target, k, "4")
  return {expired, 1}
end
local ids = redis.call("SMEMBERS", P .. "name:" .. target)
if #ids == 0 then return {expired, {"!", "noname"}} end
local mine = {}
for _, id in ipairs(ids) do
  if not user or redis.call("HGET", jkey(id), "user") == user then table.insert(mine, id) end
end
if #mine == 0 then return {expired, {"!", "denied"}} end
for _, id in ipairs(mine) do finish(id, jkey(id), "4") end
return {expired, #mine}
"""

_GET = """
return {expired, redis.call("HGETALL", jkey(ARGV[4]))}
"""

_LIST = """
local user, n = opt(ARGV[4]), tonumber(ARGV[5])
local out = {}
if n ~= 0 then
  local index = user and (P .. "user:" .. user) or (P .. "all")
  for i, entry in ipairs(redis.call("ZREVRANGE", index, 0, n < 0 and -1 or n - 1)) do
    out[i] = redis.call("HGETALL", jkey(entry:sub(17)))
  end
end
return {expired, out}
"""

_COUNT = """
return {expired, redis.call("ZCARD", P .. ARGV[4])}
"""

_PURGE = """
local n = 0
for _, id in ipairs(redis.call("ZRANGEBYSCORE", P .. "ended", "-inf", "(" .. ARGV[4])) do
  local k = jkey(id)
  local user, entry = unpack(redis.call("HMGET", k, "user", "entry"))
  redis.call("ZREM", P .. "all", entry)
  redis.call("ZREM", P .. "user:" .. user, entry)
  redis.call("ZREM", P .. "ended", id)
  redis.call("DEL", k)
  n = n + 1
end
return {expired, n}
"""

_INTS = frozenset(
    ("status", "priority", "created_at", "started_at", "ended_at", "attempts", "heartbeat_at")
)
_JSON = frozenset(("datasets", "spec"))
_FIELDS = tuple(f.name for f in fields(Job))


class _Script:
    """A Lua script run by EVALSHA, or by EVAL when Redis does not know it (NOSCRIPT)."""

    def __init__(self, body: str) -> None:
        self.text = _PRELUDE + body
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()

    async def __call__(self, client: "aioredis.Redis", args: list[str]) -> Any:
        try:
            return await client.evalsha(self.sha, 0, *args)
        except NoScriptError:
            return await client.eval(self.text, 0, *args)


ENQUEUE, CLAIM, UPDATE, CANCEL = map(_Script, (_ENQUEUE, _CLAIM, _UPDATE, _CANCEL))
GET, LIST, COUNT, PURGE = map(_Script, (_GET, _LIST, _COUNT, _PURGE))


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
        if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise InvalidRequest(f"priority must be {PRIORITY_MIN}..{PRIORITY_MAX}, got {priority}")
        if not COMMIT_RE.fullmatch(commit_id):
            raise InvalidRequest("commit_id must be 40 lowercase hex characters")
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
            kind = answer[1]
            if kind == "finished":
                status = JobStatus(int(answer[2])).name.lower()
                raise JobNotFound(f"job {job_name} is {status}, not queued or running")
            if kind == "noname":
                raise JobNotFound(f"no queued or running job named {job_name!r}")
            raise PermissionDenied(CANCEL_DENIED)
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
        if answer[0] != "!":
            return _decode(answer)
        kind = answer[1]
        if kind == "notfound":
            raise JobNotFound(f"job {job_id} not found")
        if kind == "user":
            raise PermissionDenied("You can only update your own jobs")
        if kind == "claimed":
            raise PermissionDenied(CLAIMED_DENIED)
        if kind == "cancelled":
            raise JobCancelled(f"job {job_id} was cancelled")
        if kind == "reassigned":
            raise InvalidRequest(REASSIGNED)
        now = JobStatus(int(answer[2])).name.lower()
        raise InvalidRequest(f"job {job_id} is not running (it is {now})")

    async def _run(self, script: _Script, *args: str) -> Any:
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

    async def _eval(self, script: _Script, now: int, *args: str) -> Any:
        client = self._client
        if client is None:
            raise DatabaseError("job queue is closed")
        deadline = "" if self._lease_s <= 0 else repr(now - self._lease_s)
        try:
            expired, answer = await script(client, [self._prefix, str(now), deadline, *args])
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.reachable = False
            reason = str(exc) or type(exc).__name__
            message = f"job queue unavailable: Redis at {self._where}: {reason}"
            raise ServiceUnavailable(message) from exc
        except RedisError as exc:
            logger.exception("job queue: Redis error")
            raise DatabaseError("database error") from exc
        self.reachable = True
        for job_id, worker, outcome in expired:
            logger.warning("job %s %s: lease expired (worker %s)", job_id, outcome, worker)
        return cast(Any, answer)
