"""The worker's one connection to the daemon, opened again whenever it drops.

`call(fn)` runs `fn(client)` and, when the connection is lost or cannot be
opened, reconnects and runs it again, for as long as it takes: a daemon restart
costs a running job nothing. With several URLs each reconnect goes to the next
one (fetchml/client/failover.py), with backoff (RECONNECT_S doubling up to
MAX_RECONNECT_S, with jitter) once every URL failed in a row. A key the daemon refuses at connect (revoked)
raises KeyRefused, which stops the worker. Every other error reaches the
caller. A request
whose answer was lost is sent again: heartbeats and results are idempotent,
and a lost claim's job comes back when its lease expires.

The connection sends no keepalive pings: a call unanswered for CALL_TIMEOUT_S
takes the daemon for gone instead, and an idle worker calls every 10 s at most,
so 100 idle workers cost the daemon their claims and nothing else.
"""

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from fetchml.client.connection import Client
from fetchml.client.errors import AuthenticationFailed, FetchmlConnectionError
from fetchml.client.failover import Failover
from fetchml.client.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
RECONNECT_S = 0.25
MAX_RECONNECT_S = 5.0
CALL_TIMEOUT_S = 40.0
"""As long as websockets' keepalive takes to give up (20 s ping interval + 20 s timeout)."""


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before try `attempt` (1-based) of something that keeps failing: `initial`
    doubling up to `maximum`, times a random factor in [0.75, 1]."""
    return min(maximum, initial * 2.0 ** min(attempt - 1, 30)) * random.uniform(0.75, 1.0)


class KeyRefused(Exception):
    """The daemon refuses the worker's key: nothing more can be done (not a FetchmlError,
    so that no retry loop takes it for an answer about one job)."""


class Link:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._urls = Failover(
            settings.urls, lambda rounds: backoff(rounds, RECONNECT_S, MAX_RECONNECT_S)
        )
        self._client: Client | None = None
        self._lock = anyio.Lock()

    async def call(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        while True:
            client = await self._connected()
            try:
                with anyio.fail_after(CALL_TIMEOUT_S):
                    return await fn(client)
            except FetchmlConnectionError as exc:
                await self._drop(client, exc)
            except TimeoutError:
                await self._drop(client, f"no answer in {CALL_TIMEOUT_S:g} s")

    async def _connected(self) -> Client:
        async with self._lock:
            urls = self._urls
            while self._client is None:
                url = urls.url
                try:
                    self._client = await Client.connect(url, self.settings.api_key, keepalive=False)
                except AuthenticationFailed as exc:
                    raise KeyRefused(exc.message) from None
                except FetchmlConnectionError as exc:
                    delay = urls.failed()
                    logger.warning("%s; trying %s in %.1f s", exc, urls.url, delay)
                    await anyio.sleep(delay)
                else:
                    if urls.failures:
                        logger.info("reconnected to %s", url)
                    urls.succeeded()
            return self._client

    async def _drop(self, client: Client, exc: Exception | str) -> None:
        if self._client is client:
            self._client = None
            self._urls.dropped()
            logger.warning("%s; reconnecting to %s", exc, self._urls.url)
            client.abort()  # already broken: no closing handshake to wait for

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
