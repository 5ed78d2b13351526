"""A cluster node's link to Redis: its registration, the nodes alive, and whether Redis
answers (`up`). redis-py is imported when a link is made, never on the standalone path."""

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .config import ClusterConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

BEAT_S = 2.0
"""A node refreshes its registration (and its view of the nodes) this often."""
TTL_S = 10.0
"""A node's registration expires this long after its last heartbeat (a dead node's name
is free again after it)."""
TIMEOUT_S = 3.0
"""The longest one Redis call may take before Redis counts as unreachable."""

T = TypeVar("T")

# Set this node's entry unless another node's (a different prefix: name, host, pid, port,
# started) holds the name; nil on success, else the holder's entry.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[2]) ~= ARGV[2] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return false
"""
_RELEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0
"""


class NodeNameTaken(Exception):
    """Another live node is registered under this node's name."""


class RedisDown(Exception):
    """Redis did not answer (or is known not to); callers fall back or refuse."""


class ClusterLink:
    """One redis.asyncio client for this node; `up` says whether the last call succeeded,
    logged once per change. `start` registers the node (refusing a name a live node holds),
    `run` keeps the registration and the view of live nodes fresh and re-registers after
    Redis comes back, `stop` removes the registration."""

    def __init__(self, config: ClusterConfig, host: str | None = None) -> None:
        from redis.asyncio import from_url
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.config = config
        self.prefix = config.key_prefix
        self.redis: Redis = from_url(
            config.redis_url,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # one try: the heartbeat is the retry
            decode_responses=True,
        )
        self.host = host or socket.gethostname()
        self.name = ""
        self.up = True
        self.registered = False
        self.live: list[str] = []
        """Names of the nodes alive at the last heartbeat (the last seen while Redis is down)."""
        self.taken = ""
        """Why this node is not registered: another live node holds its name."""
        self._holder: str | None = None
        """That node's entry, as read."""
        self._entry: dict[str, object] = {}
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def call(self, op: Callable[["Redis"], Awaitable[T]]) -> T:
        """`op(redis)` within TIMEOUT_S; RedisDown (and `up` false) when it fails."""
        from redis.exceptions import RedisError

        try:
            with anyio.fail_after(TIMEOUT_S):
                result = await op(self.redis)
        except (RedisError, OSError, TimeoutError) as exc:
            self._set_up(False, exc)
            raise RedisDown(str(exc) or type(exc).__name__) from exc
        self._set_up(True)
        return result

    def _set_up(self, up: bool, exc: BaseException | None = None) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            logger.info("redis reachable again at %s", self._where())
        else:
            logger.warning(
                "redis unreachable at %s (%s): degraded until it answers", self._where(), exc
            )

    def _where(self) -> str:
        url = self.config.redis_url
        return url.rpartition("@")[2] if "@" in url else url  # never log a password

    async def start(self, port: int) -> None:
        """Register this node (name: cluster.node_name, else host:port). NodeNameTaken when
        a live node holds the name; while Redis is unreachable the node starts degraded and
        registers once it answers."""
        self.name = self.config.node_name or f"{self.host}:{port}"
        self._entry = {"name": self.name, "host": self.host, "pid": os.getpid(), "port": port}
        self._entry["started"] = round(time.time(), 3)
        try:
            await self.beat()
            if self.taken and self._holder and _dead_here(self._holder, self.host):
                # This machine's node of that name was killed (systemd restarts it at once):
                # its entry would hold the name for up to TTL_S. Remove exactly that entry.
                logger.warning("%s; its process is gone from this host: taking over", self.taken)
                args = [self._holder, self.name]
                keys = [self.key("node", self.name), self.key("nodes")]
                await self.call(lambda r: self._release(keys=keys, args=args))
                await self.beat()
        except RedisDown:
            return
        if self.taken:
            raise NodeNameTaken(self.taken)

    @contextlib.asynccontextmanager
    async def serving(self, port: int) -> AsyncIterator[None]:
        """`start` on entry, `stop` on exit (even when cancelled)."""
        try:
            await self.start(port)
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.stop()

    async def beat(self) -> None:
        """Refresh the registration (set again if it expired meanwhile) and the live nodes."""
        value = json.dumps(dict(self._entry, heartbeat=round(time.time(), 3)))
        args: list[str | int] = [value, self._mine(), int(TTL_S * 1000), self.name]
        keys = [self.key("node", self.name), self.key("nodes")]
        holder = await self.call(lambda r: self._claim(keys=keys, args=args))
        self._holder = None if holder is None else str(holder)
        self.taken = "" if holder is None else _taken(self.name, holder)
        self.registered = holder is None
        self.live = [node["name"] for node in await self.nodes()]

    async def run(self) -> None:
        """Heartbeat every BEAT_S until cancelled."""
        while True:
            await anyio.sleep(BEAT_S)
            taken = self.taken
            try:
                await self.beat()
            except RedisDown:
                continue  # logged once by call(); the next beat tries again
            if self.taken and not taken:
                logger.error("%s: this node is not registered", self.taken)
            elif taken and not self.taken:
                logger.info("node %s registered", self.name)

    async def stop(self) -> None:
        """Remove this node's registration (clean shutdown); then close the client."""
        try:
            if self.registered and self.up:
                args = [self._mine(), self.name]
                keys = [self.key("node", self.name), self.key("nodes")]
                await self.call(lambda r: self._release(keys=keys, args=args))
        except RedisDown:
            pass  # the registration expires by itself
        finally:
            await self.close()

    async def close(self) -> None:
        with anyio.move_on_after(TIMEOUT_S):
            await self.redis.aclose()

    def _mine(self) -> str:
        value = json.dumps(dict(self._entry, heartbeat=0))
        return value[: value.index('"heartbeat"')]

    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes' entries, by name; names whose entry expired are dropped from the
        set of names."""
        names = sorted(str(n) for n in await self.call(lambda r: r.smembers(self.key("nodes"))))
        if not names:
            return []
        values = await self.call(lambda r: r.mget([self.key("node", n) for n in names]))
        gone = [n for n, v in zip(names, values, strict=True) if v is None]
        if gone:
            await self.call(lambda r: r.srem(self.key("nodes"), *gone))
        return [json.loads(v) for v in values if v is not None]


def _dead_here(holder: str, host: str) -> bool:
    """The entry is of a node on this host whose process no longer exists."""
    try:
        entry = json.loads(holder)
        if entry["host"] != host:
            return False
        os.kill(int(entry["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, OSError):
        return False
    return False


def _taken(name: str, holder: str) -> str:
    try:
        entry = json.loads(holder)
        age = time.time() - float(entry["heartbeat"])
        who = f"host {entry['host']}, pid {entry['pid']}, last heartbeat {age:.1f} s ago"
    except (ValueError, KeyError, TypeError):
        who = "unreadable entry"
    return (
        f"node name {name!r} is held by a live node ({who}); set a distinct "
        f"cluster.node_name, or wait up to {TTL_S:.0f} s if that node is gone"
    )


async def live_nodes(config: ClusterConfig) -> list[dict[str, Any]]:
    """The nodes alive in the cluster's Redis (RedisDown when it does not answer)."""
    link = ClusterLink(config)
    try:
        return await link.nodes()
    finally:
        await link.close()
