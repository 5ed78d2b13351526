"""WATCH_METRICS as an async iterator that survives drops.

A watch owns its connection (the server turns a watching connection into a
push stream). Every DATA `metrics` packet carries `next`, the record index
just past what it covers; after a drop, a daemon restart or a 1008 "subscriber
too slow" close, the watch reconnects with exponential backoff and subscribes
again from the last `next` it received, so it sees no gap and no duplicate.
With several URLs it reconnects to the next one (failover.py): record indices
are positions in the shared file, so the stream resumes on any daemon.

    async with client.watch(commit) as batches:
        async for batch in batches:
            for record in batch.records: ...
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fetchml.protocol import requests as rq
from fetchml.protocol.errors import MalformedResponse
from fetchml.protocol.metrics import decode_metrics_payload
from fetchml.protocol.responses import (
    Data,
    Error,
    Log,
    Progress,
    Response,
    Success,
    decode_response,
)

from .errors import RETRYABLE, FetchmlConnectionError, NotFound, ProtocolViolation, error_from
from .failover import Failover
from .models import MetricsPage
from .settings import Settings
from .transport import EventHandler, backoff_delay, log_event, open_websocket

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchOptions:
    open_timeout: float = 10.0
    initial_backoff: float = 0.05
    """Delay before the second reconnect attempt (the first is immediate); doubles each time."""
    max_backoff: float = 2.0
    max_retries: int | None = None
    """Failed reconnect attempts in a row before giving up (None: keep trying); with
    several URLs, rounds in which every URL failed."""
    skip_empty: bool = True
    """Do not yield packets that carry no records (their `next` is still taken)."""
    wait_for_experiment: float = 0.0
    """While the experiment does not exist yet, subscribe again every so many seconds
    (0: raise NotFound at once). Only before the first subscription succeeds."""


class MetricWatch:
    """Async iterator of MetricsPage batches for one experiment (optionally one metric name)."""

    def __init__(
        self,
        settings: Settings,
        commit: bytes,
        from_index: int = 0,
        name: str = "",
        *,
        options: WatchOptions | None = None,
        on_event: EventHandler | None = None,
        on_close: Callable[["MetricWatch"], None] | None = None,
    ) -> None:
        self._settings = settings
        self._commit = commit
        self._next = from_index
        self._name = name
        self._options = options or WatchOptions()
        self._on_event = on_event or log_event
        self._on_close = on_close
        self._ws: ClientConnection | None = None
        opts = self._options
        self._urls = Failover(
            settings.urls,
            lambda rounds: backoff_delay(rounds + 1, opts.initial_backoff, opts.max_backoff),
        )
        self._subscribed_once = False
        self._closed = False
        self.reconnects = 0
        """How many times the stream was re-established after a drop."""

    @property
    def next(self) -> int:
        """The record index the stream resumes from: the last `next` received."""
        return self._next

    @property
    def commit(self) -> str:
        return self._commit.hex()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MetricsPage:
        while not self._closed:
            ws = self._ws or await self._subscribe()
            if ws is None:
                break
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                self._ws = None
                self._urls.dropped()
                if not self._closed:
                    logger.info(
                        "watch %s: connection lost (%s); resuming at %d on %s",
                        self.commit,
                        exc,
                        self._next,
                        self._urls.url,
                    )
                continue
            response = self._decode(message)
            if isinstance(response, Progress | Log):
                self._on_event(response)
                continue
            if isinstance(response, Error):
                await self._drop(ws)
                raise error_from(response.code, response.message, response.details)
            if not isinstance(response, Data) or response.data_type != "metrics":
                await self._drop(ws)
                raise ProtocolViolation(f"unexpected {type(response).__name__} in a watch stream")
            try:
                page = decode_metrics_payload(response.payload)
            except MalformedResponse as exc:
                await self._drop(ws)
                raise ProtocolViolation(exc.message) from None
            self._next = max(self._next, page.next)
            if page.records or not self._options.skip_empty:
                return MetricsPage(next=page.next, records=tuple(page.records))
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._drop(self._ws)
        if self._on_close is not None:
            self._on_close(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals -------------------------------------------------------------

    def _decode(self, message: str | bytes) -> Response:
        if isinstance(message, str):
            raise ProtocolViolation("server sent a text message")
        try:
            return decode_response(message)
        except MalformedResponse as exc:
            raise ProtocolViolation(exc.message) from None

    async def _drop(self, ws: ClientConnection) -> None:
        if self._ws is ws:
            self._ws = None
        await ws.close()

    async def _subscribe(self) -> ClientConnection | None:
        """Open a connection and send WATCH_METRICS from `next`; None once closed.

        The first subscription fails once every URL failed (or, for a missing
        experiment, waits with `wait_for_experiment`); later ones retry with backoff.
        """
        urls, wait = self._urls, 0.0
        while not self._closed:
            await asyncio.sleep(wait)
            if self._closed:
                break
            opts = self._options
            try:
                ws = await self._try_subscribe(urls.url)
            except NotFound:
                if self._subscribed_once or opts.wait_for_experiment <= 0:
                    raise
                logger.info("watch %s: no such experiment yet, waiting", self.commit)
                urls.succeeded()
                wait = opts.wait_for_experiment
                continue
            except FetchmlConnectionError as exc:
                url, wait = urls.url, urls.failed()
                limit = opts.max_retries
                if isinstance(exc, ProtocolViolation) or (
                    (not self._subscribed_once or (limit is not None and urls.rounds > limit))
                    and not urls.failures % len(urls.urls)
                ):
                    raise
                logger.info(
                    "watch %s: reconnect attempt %d to %s failed: %s",
                    self.commit,
                    urls.failures,
                    url,
                    exc,
                )
                continue
            urls.succeeded()
            if self._subscribed_once:
                self.reconnects += 1
            self._subscribed_once = True
            self._ws = ws
            return ws
        return None

    async def _try_subscribe(self, url: str) -> ClientConnection:
        ws = await open_websocket(url, self._options.open_timeout, self._settings.api_key)
        request = rq.WatchMetrics(
            key_hash=self._settings.key_hash,
            commit_id=self._commit,
            from_index=self._next,
            name=self._name,
        )
        try:
            await ws.send(rq.encode_request(request))
            while True:
                response = self._decode(await ws.recv())
                if not isinstance(response, Progress | Log):
                    break
                self._on_event(response)
        except ConnectionClosed as exc:
            raise FetchmlConnectionError(f"watch connection closed: {exc}") from None
        except BaseException:
            await ws.close()
            raise
        if isinstance(response, Success):
            return ws
        await ws.close()
        if isinstance(response, Error):
            error = error_from(response.code, response.message, response.details)
            if self._subscribed_once and response.code in RETRYABLE:
                raise FetchmlConnectionError(f"server busy: {error.message}")
            raise error
        raise ProtocolViolation(f"expected SUCCESS to WATCH_METRICS, got {type(response).__name__}")
