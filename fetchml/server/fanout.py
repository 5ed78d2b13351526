"""Cluster fan-out over Redis pub/sub: live watches across nodes, prune on every node.

After each flush the store's commit hook notes the experiment's new end; one task
publishes the latest end of each experiment flushed since its last round, so a flush
costs at most one PUBLISH (a burst of flushes may cost fewer), never one per record,
and ingest never waits on Redis. A subscription on a connection of its own takes the
other nodes' messages: an append nudges this node's watchers of that experiment (they
read what is new from the shared file, in order), a prune ends them and drops the
experiment's caches.

While Redis is unreachable `up` is False and messages are dropped: watchers of other
nodes' appends are served by polling the files meanwhile. The subscriber reconnects
with backoff and, subscribed again, nudges every watched experiment once, so what was
missed meanwhile does not wait for the next poll. redis is imported only here, and only
when the fan-out runs (cluster mode).
"""

import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

import anyio

from .config import ClusterConfig
from .errors import ServiceUnavailable
from .files import check_commit

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from .storage import ExperimentStore
    from .watch import WatchHub

logger = logging.getLogger(__name__)

TIMEOUT_S = 2.0
"""Connecting to Redis, and each command, gives up after this long."""
PING_S = 2.0
"""A subscription silent this long is pinged; silent three times as long, it is dead."""
MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
"""Reconnection attempts back off up to this interval."""


class Fanout:
    """This node's side of the cluster's fan-out channel (`<key_prefix>fanout`)."""

    def __init__(self, cluster: ClusterConfig, store: "ExperimentStore", hub: "WatchHub") -> None:
        self.url = cluster.redis_url
        self.channel = f"{cluster.key_prefix}fanout"
        self.node = cluster.node_name
        self.instance = secrets.token_hex(8)
        """Tells this process's own messages apart, even under a node name given twice."""
        self.store = store
        self.hub = hub
        self.up = False
        """Subscribed to the channel now (/health reports "degraded" while False)."""
        self.published = 0
        self.heard = 0
        """Messages of other nodes acted upon."""
        self._ends: dict[str, int] = {}
        """The latest end of each experiment flushed since the last publish."""
        self._pruned: list[str] = []
        self._wakeup = anyio.Event()
        self._client: Redis | None = None

    def on_commit(self, commit: str, first: int, data: bytes, count: int) -> None:
        """The store's commit hook: note the new end, publish later."""
        self._ends[commit] = first + count
        self._wakeup.set()

    def pruned(self, commits: list[str]) -> None:
        """Experiments this node pruned: every other node ends their watchers and caches."""
        self._pruned += commits
        for commit in commits:
            self._ends.pop(commit, None)
        if commits:
            self._wakeup.set()

    async def require(self) -> None:
        """Raise ServiceUnavailable unless Redis answers now (for what must reach every node)."""
        from redis.exceptions import RedisError

        try:
            if self._client is None or not self.up:
                raise ConnectionError("not subscribed")
            with anyio.fail_after(TIMEOUT_S):
                await self._client.ping()
        except (RedisError, OSError) as exc:
            logger.warning("fan-out: Redis unreachable: %s", exc)
            raise ServiceUnavailable("the cluster's Redis is unreachable") from None

    async def run(self, node: str) -> None:
        """Publish and subscribe until cancelled; never raises for Redis being away."""
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.node = node
        client = redis.asyncio.Redis.from_url(
            self.url,
            socket_connect_timeout=TIMEOUT_S,
            socket_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # reconnecting is the subscriber's loop
        )
        self._client = client
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._publish, client)
                await self._subscribe(client)
        finally:
            self.up = False
            with anyio.move_on_after(TIMEOUT_S, shield=True):
                await client.aclose()

    # -- publishing ----------------------------------------------------------

    def _message(self, **fields: object) -> str:
        return json.dumps({"node": self.node, "instance": self.instance, **fields})

    async def _publish(self, client: "Redis") -> None:
        from redis.exceptions import RedisError

        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            ends, self._ends = self._ends, {}
            pruned, self._pruned = self._pruned, []
            if not self.up:
                continue  # dropped while Redis is away: other nodes poll the files meanwhile
            messages = [self._message(pruned=commit) for commit in pruned]
            messages += [self._message(commit=commit, end=end) for commit, end in ends.items()]
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for message in messages:
                        pipe.publish(self.channel, message)
                    await pipe.execute()
                self.published += len(messages)
            except (RedisError, OSError) as exc:
                logger.warning("fan-out: %d messages not published: %s", len(messages), exc)

    # -- subscribing ---------------------------------------------------------

    async def _subscribe(self, client: "Redis") -> None:
        from redis.exceptions import RedisError

        backoff = MIN_BACKOFF_S
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                confirmed = await pubsub.get_message(timeout=TIMEOUT_S)
                if not confirmed or confirmed["type"] != "subscribe":
                    raise TimeoutError(f"no confirmation of SUBSCRIBE {self.channel}")
                self.up = True
                backoff = MIN_BACKOFF_S
                logger.info("fan-out: subscribed to %s as %s", self.channel, self.node)
                for commit in self.hub.watched():  # what was missed while away
                    self.hub.nudge(commit)
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                if backoff == MIN_BACKOFF_S:  # the first failure since starting or subscribing
                    logger.warning("fan-out: Redis unreachable, reconnecting: %s", exc)
                self.up = False
            finally:
                with anyio.move_on_after(TIMEOUT_S, shield=True):
                    await pubsub.aclose()
            await anyio.sleep(backoff)
            backoff = min(2 * backoff, MAX_BACKOFF_S)

    async def _listen(self, pubsub: "PubSub") -> None:
        silent = 0
        while True:
            message = await pubsub.get_message(timeout=PING_S)
            if message is None:
                silent += 1
                if silent == 3:
                    raise TimeoutError("Redis did not answer PING")
                await pubsub.ping()
                continue
            silent = 0
            if message["type"] == "message":
                self._received(message["data"])

    def _received(self, data: bytes) -> None:
        try:
            message: dict[str, Any] = json.loads(data)
            if message["instance"] == self.instance:
                return
            self.heard += 1
            if "pruned" in message:
                commit = check_commit(message["pruned"])
                self.store.forget(commit)
                self.hub.end(commit)
            else:
                commit = check_commit(message["commit"])
                self.hub.nudge(commit)
        except Exception as exc:  # a bad message must not stop the subscription
            logger.warning("fan-out: ignored message %r: %r", data[:200], exc)
