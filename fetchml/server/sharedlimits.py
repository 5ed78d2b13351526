"""Cluster mode: per-user rate limits and bad-key throttling counted in Redis, so that N
nodes do not multiply them. While Redis is unreachable both fall back to this node's own
counters (the standalone ones), and go back to Redis once the heartbeat finds it again.

Each counted control request costs one round trip (INCR and PEXPIRE in one MULTI, its
window starting at the user's first request); a bad-key failure one (a script), and a
handshake without a key one more (its address's throttle, read before it is answered).
"""

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from .auth import RateLimiter
from .cluster import ClusterLink, RedisDown
from .errors import Overloaded
from .throttle import BACKOFF_S, FAILURES, FORGET_S, MAX_BACKOFF_S, MAX_PEERS, WINDOW_S, Throttle

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000

# KEYS: failures, strikes, throttled; ARGV: failures, window ms, backoff ms, max ms, forget ms,
# the failures to add. The failure that reaches the limit throttles the address for a backoff that doubles with
# each throttle; the milliseconds the address stays throttled (<= 0: not throttled).
_FAIL = """
local n = redis.call('INCRBY', KEYS[1], ARGV[6])
if n == tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if n >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  local strikes = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  local backoff = math.min(tonumber(ARGV[3]) * 2 ^ (strikes - 1), tonumber(ARGV[4]))
  if redis.call('PTTL', KEYS[3]) < backoff then
    redis.call('SET', KEYS[3], '1', 'PX', math.floor(backoff))
  end
end
return redis.call('PTTL', KEYS[3])
"""


class SharedRateLimiter(RateLimiter):
    """`control_requests_per_minute` per user across the cluster: a counter per user in
    Redis whose minute starts at the first request; `check` is the per-node fallback."""

    shared = True

    def __init__(self, per_minute: int, link: ClusterLink) -> None:
        super().__init__(per_minute)
        self.link = link

    async def count(self, user: str) -> None:
        if not self.link.up:
            return self.check(user)
        key = self.link.key("rate", user)

        async def incr(r: "Redis") -> int:
            async with r.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.pexpire(key, WINDOW_MS, nx=True)
                n, _ = await pipe.execute()
            return int(n)

        try:
            n = await self.link.call(incr)
        except RedisDown:
            return self.check(user)
        if n > self.per_minute:
            raise Overloaded(f"rate limit exceeded: {self.per_minute} control requests per minute")


class SharedThrottle(Throttle):
    """Bad-key failures per address across the cluster. This node's own counting (the
    standalone Throttle) goes on beside it: it never throttles before the shared count
    would, and it is what counts while Redis is down. Failures are sent in batches
    (`flush`): by the handshake that counted them before it is answered, by `run` for
    failures counted on open connections."""

    def __init__(self, link: ClusterLink, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.link = link
        self._pending: collections.Counter[str] = collections.Counter()
        self._until: dict[str, float] = {}
        """Throttles read from Redis: address to the clock's time it ends."""
        self._wake = anyio.Event()
        self._fail = link.redis.register_script(_FAIL)

    def failure(self, peer: str) -> float:
        local = super().failure(peer)
        if self.link.up:
            self._pending[peer] += 1
            self._wake.set()
        return max(local, self._remote(peer))

    def retry_after(self, peer: str) -> float:
        return max(super().retry_after(peer), self._remote(peer))

    def _remote(self, peer: str) -> float:
        return max(0.0, self._until.get(peer, 0.0) - self.clock())

    def _learn(self, peer: str, ttl_ms: int) -> None:
        if ttl_ms > 0:
            self._until[peer] = self.clock() + ttl_ms / 1000
        else:
            self._until.pop(peer, None)
        if len(self._until) > MAX_PEERS:
            now = self.clock()
            self._until = {p: t for p, t in self._until.items() if t > now}

    async def refresh(self, peer: str) -> None:
        if not self.link.up:
            return
        try:
            ttl = await self.link.call(lambda r: r.pttl(self.link.key("throttled", peer)))
        except RedisDown:
            return
        self._learn(peer, int(ttl))

    async def flush(self) -> None:
        pending, self._pending = self._pending, collections.Counter()
        if not pending or not self.link.up:
            return
        peers = list(pending)
        limits = [
            FAILURES,
            WINDOW_S * 1000,
            BACKOFF_S * 1000,
            MAX_BACKOFF_S * 1000,
            FORGET_S * 1000,
        ]

        async def send(r: "Redis") -> list[int]:
            ttls = []
            for peer in peers:  # one call per address, however many failures it had
                keys = [self.link.key(kind, peer) for kind in ("authfail", "strikes", "throttled")]
                args = [*map(int, limits), pending[peer]]
                ttls.append(int(await self._fail(keys=keys, args=args, client=r)))
            return ttls

        try:
            ttls = await self.link.call(send)
        except RedisDown:
            return  # this node's own count stands in
        for peer, ttl in zip(peers, ttls, strict=True):
            was = self._remote(peer)
            self._learn(peer, ttl)
            if ttl > 0 and not was:
                logger.warning(
                    "throttling %s for %.0f s across the cluster: %d authentication failures",
                    peer,
                    ttl / 1000,
                    self.failures,
                )

    async def run(self) -> None:
        """Send the failures counted outside a handshake as they come, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self.flush()
