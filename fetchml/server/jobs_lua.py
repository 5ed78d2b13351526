"""The Lua scripts of RedisJobQueue (jobs_redis.py), one per operation, each run atomically
by EVALSHA (EVAL when Redis answers NOSCRIPT). Every script first expires lost leases, as
SqliteJobQueue does before every operation, and answers {expired, result}. ARGV: the key
prefix P, now, the lease deadline ("" when leases are off), then the operation's own.
Optional strings come as "" (None) or "=" + value. Keys, all under P:

- `P job:<id>`: a hash, one field per Job field that is not None, plus `score` (the
  queue position) and `entry` (the member in the listing indexes);
- `P queue` and `P queue:<user>`: queued jobs by score (255 - priority) * 2**44 + seq,
  so higher priority first, then insertion order;
- `P running`: running jobs with a spec by max(started_at, heartbeat_at) (leases);
- `P all` and `P user:<user>`: every job by created_at, member zero-padded seq + id,
  so ties list later insertion first;
- `P name:<job_name>`: IDs of the queued and running jobs of that name;
- `P ended`: finished jobs by ended_at (history retention); `P seq`: the counter.

The scripts name their keys from P at run time: one Redis server (or a primary with
replicas), not Redis Cluster's hash slots.
"""

import hashlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

PRELUDE = """
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
    local attempts = tonumber(j[1] or 0) + 1
    if not j[2] then  -- the hash is gone (deleted by hand): forget the lease
      redis.call("ZREM", P .. "running", id)
    elseif attempts >= (cjson.decode(j[2]).max_attempts or 1) then
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
  for _, entry in ipairs(redis.call("ZREVRANGE", index, 0, n < 0 and -1 or n - 1)) do
    local job = redis.call("HGETALL", jkey(entry:sub(17)))
    if #job > 0 then table.insert(out, job) end  -- else deleted by hand
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
  if entry then
    redis.call("ZREM", P .. "all", entry)
    redis.call("ZREM", P .. "user:" .. user, entry)
  end
  redis.call("ZREM", P .. "ended", id)
  redis.call("DEL", k)
  n = n + 1
end
return {expired, n}
"""


class Script:
    """A Lua script run by EVALSHA, or by EVAL when Redis does not know it (NOSCRIPT)."""

    def __init__(self, body: str) -> None:
        self.text = PRELUDE + body
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()

    async def __call__(self, client: "aioredis.Redis", args: list[str]) -> Any:
        try:
            return await client.evalsha(self.sha, 0, *args)
        except NoScriptError:
            return await client.eval(self.text, 0, *args)


ENQUEUE, CLAIM, UPDATE, CANCEL = map(Script, (_ENQUEUE, _CLAIM, _UPDATE, _CANCEL))
GET, LIST, COUNT, PURGE = map(Script, (_GET, _LIST, _COUNT, _PURGE))
