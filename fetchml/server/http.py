"""Plain HTTP on the WebSocket port: /health, /metrics, and the handshake checks."""

import bisect
import collections
import http
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from fetchml.protocol.keys import KEY_TOKEN_PREFIX, handshake_key_ok, key_hash
from fetchml.protocol.keys import SUBPROTOCOL as _SUBPROTOCOL

from .audit import AuthFailures
from .auth import KeyTable
from .throttle import Throttle, Unverified
from .web import is_web_path, web_response

logger = logging.getLogger(__name__)

WS_PATH = "/ws"
SUBPROTOCOL = Subprotocol(_SUBPROTOCOL)


@dataclass
class Metrics:
    """Prometheus metrics of one daemon (its own registry, so tests can run several)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.connections = Gauge(
            "fetchml_connections_open", "Open WebSocket connections", registry=r
        )
        self.connections_total = Counter(
            "fetchml_connections", "WebSocket connections accepted", registry=r
        )
        self.requests: collections.Counter[str] = collections.Counter()
        """Requests by opcode name: a plain dict on the hot path, exported at scrape time."""
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        r.register(_RequestCollector(self))
        self.flushes = Flushes()
        """Every group commit's flush counts here: plain numbers, exported at scrape time
        (prometheus_client's Counter and two Histograms cost some 14 dict updates)."""
        r.register(_FlushCollector(self.flushes))
        self.watchers = Gauge("fetchml_watchers", "Active WATCH_METRICS subscribers", registry=r)
        self.auth_failures = Counter(
            "fetchml_auth_failures", "Rejected keys (handshake and requests)", registry=r
        )
        self.refused = Counter(
            "fetchml_handshakes_refused",
            "WebSocket handshakes refused, by HTTP status",
            ["status"],
            registry=r,
        )
        self.audit_write_errors = Counter(
            "fetchml_audit_write_errors", "Audit lines that could not be written", registry=r
        )
        self.cluster_nodes = Gauge(
            "fetchml_cluster_nodes", "Cluster nodes alive in Redis (0 standalone)", registry=r
        )
        self.redis_up = Gauge(
            "fetchml_redis_up", "1 while the cluster's Redis answers (0 standalone)", registry=r
        )

    def on_flush(self, records: int, seconds: float) -> None:
        self.flushes.add(records, seconds)


class Flushes:
    """Group-commit flushes: records written, and per flush its records and seconds, by
    histogram bucket (each count in the first bucket whose bound is at least the value)."""

    RECORDS = (1, 10, 100, 1000, 10000, 100000, 1000000)
    SECONDS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)

    def __init__(self) -> None:
        self.count = 0
        self.records = 0
        self.seconds = 0.0
        self.by_records = [0] * (len(self.RECORDS) + 1)
        self.by_seconds = [0] * (len(self.SECONDS) + 1)

    def add(self, records: int, seconds: float) -> None:
        self.count += 1
        self.records += records
        self.seconds += seconds
        self.by_records[bisect.bisect_left(self.RECORDS, records)] += 1
        self.by_seconds[bisect.bisect_left(self.SECONDS, seconds)] += 1


_go_float: Callable[[float], str] = floatToGoString
"""A bucket bound as prometheus_client writes it ("1.0", "1e+06")."""


def _histogram(
    name: str, doc: str, bounds: Sequence[float], counts: list[int], total: float
) -> HistogramMetricFamily:
    cumulative = list(itertools.accumulate(counts))
    labels = [*(_go_float(b) for b in bounds), "+Inf"]
    return HistogramMetricFamily(
        name, doc, buckets=list(zip(labels, cumulative, strict=True)), sum_value=total
    )


class _FlushCollector(Collector):
    def __init__(self, flushes: Flushes) -> None:
        self.flushes = flushes

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        f = self.flushes
        yield CounterMetricFamily(
            "fetchml_metrics_appended", "Metric records written to metrics.bin", f.records
        )
        yield _histogram(
            "fetchml_flush_records",
            "Records per group-commit flush",
            f.RECORDS,
            f.by_records,
            f.records,
        )
        yield _histogram(
            "fetchml_flush_seconds",
            "Seconds per group-commit flush",
            f.SECONDS,
            f.by_seconds,
            f.seconds,
        )


class _RequestCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily("fetchml_requests", "Requests by opcode", labels=["opcode"])
        for opcode, n in sorted(self.metrics.requests.items()):
            requests.add_metric([opcode], n)
        yield requests
        errors = CounterMetricFamily(
            "fetchml_request_errors",
            "ERROR responses by opcode and code",
            labels=["opcode", "code"],
        )
        for (opcode, code), n in sorted(self.metrics.errors.items()):
            errors.add_metric([opcode, code], n)
        yield errors


class QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger without its debug output, which prints handshake headers
    (X-API-Key, Authorization) and the first bytes of frames (key hashes). Its routine
    per-connection lines (open, closed, rejected) go to our debug level: a flood of
    connections must not become a flood of log lines."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and super().isEnabledFor(level)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level == logging.INFO and msg in _ROUTINE:
            logger.debug(msg, *args)
        else:
            super().log(level, msg, *args, **kwargs)


_ROUTINE = frozenset(
    {
        "connection open",
        "connection closed",
        "connection rejected (%d %s)",
        "HTTP response sent (%d %s)",
    }
)


class BadHandshakeKey(Exception):
    """A handshake's keys are malformed (400) or not all the same (401)."""

    def __init__(self, status: http.HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def handshake_key(headers: Headers) -> str | None:
    """The raw key a handshake carries in `X-API-Key`, `Authorization: Bearer` or a
    `fetchml.key.<key>` subprotocol token, if any. Every key given must be the same."""
    keys = [_raw(value.strip()) for value in headers.get_all("X-API-Key")]
    for value in headers.get_all("Authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            keys.append(_raw(token.strip()))
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        try:
            tokens = parse_subprotocol(value)
        except InvalidHeader:
            raise BadHandshakeKey(http.HTTPStatus.BAD_REQUEST, "malformed subprotocol") from None
        keys += [
            _raw(t.removeprefix(KEY_TOKEN_PREFIX)) for t in tokens if t.startswith(KEY_TOKEN_PREFIX)
        ]
    if len(set(keys)) > 1:
        raise BadHandshakeKey(http.HTTPStatus.UNAUTHORIZED, "different keys in one handshake")
    return keys[0] if keys else None


def _raw(key: str) -> str:
    if not handshake_key_ok(key):
        raise BadHandshakeKey(http.HTTPStatus.BAD_REQUEST, "malformed key")
    return key


def select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """`fetchml` when offered, else none; never a key token, never a refusal."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


class Shuttable(Protocol):
    def shut(self, code: int, reason: str) -> None: ...


@dataclass
class Gate:
    """websockets' process_request: routes, limits and the pre-upgrade auth checks; the
    bad-key throttle and the connections without a valid key yet, per address."""

    keys: Callable[[], KeyTable]
    metrics: Metrics
    health: Callable[[], dict[str, object]]
    max_connections: int
    open_connections: Callable[[], int]
    audit: Callable[..., None] = lambda *a, **k: None
    max_per_ip: int = 256
    throttle: Throttle = field(default_factory=Throttle)
    unverified: Unverified[Shuttable] = field(default_factory=Unverified)
    failures: AuthFailures = field(init=False)

    def __post_init__(self) -> None:
        self.failures = AuthFailures(self.audit)

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        keys = self.keys()
        peer = connection.remote_address[0] if connection.remote_address else "?"
        if not keys.allows_peer(peer):
            return self._refuse(connection, http.HTTPStatus.FORBIDDEN, "forbidden")
        path = request.path.split("?", 1)[0]
        if path == "/health":
            return _response(connection, json.dumps(self.health()) + "\n", "application/json")
        if path == "/metrics":
            return _response(
                connection, generate_latest(self.metrics.registry).decode(), CONTENT_TYPE_LATEST
            )
        if is_web_path(path):
            return web_response(connection, request, path)
        if path != WS_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        try:
            raw = handshake_key(request.headers)
        except BadHandshakeKey as exc:
            if exc.status == http.HTTPStatus.UNAUTHORIZED:
                self.failed(peer, exc.reason)
            return self._refuse(connection, exc.status, exc.reason)
        if raw is not None:
            if keys.lookup(key_hash(raw)) is None:
                self.failed(peer, "invalid handshake key")
                return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, "invalid API key")
            if self.open_connections() >= self.max_connections and not self._make_room():
                return self._refuse(connection, SERVICE_UNAVAILABLE, "too many connections")
            return None
        if keys.require_key:
            self.failed(peer, "no handshake key")
            return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, "API key required")
        retry = self.throttle.retry_after(peer)
        if retry:
            response = self._refuse(connection, TOO_MANY, "too many authentication failures")
            response.headers["Retry-After"] = str(math.ceil(retry))
            return response
        if self.unverified.count(peer) >= self.max_per_ip:
            return self._refuse(connection, TOO_MANY, "too many connections without a key")
        if self.open_connections() >= self.max_connections:
            return self._refuse(connection, SERVICE_UNAVAILABLE, "too many connections")
        return None

    async def shared(self, connection: ServerConnection, request: Request) -> Response | None:
        """process_request in cluster mode: a key-less upgrade first reads whether its address
        is throttled on any node; the failures a handshake counted are shared before it is
        answered."""
        if request.path.split("?", 1)[0] == WS_PATH and _keyless(request.headers):
            peer = connection.remote_address[0] if connection.remote_address else "?"
            await self.throttle.refresh(peer)
        response = self(connection, request)
        await self.throttle.flush()
        return response

    def failed(self, peer: str, reason: str, counts: bool = True) -> bool:
        """An authentication failure from `peer`: counted and reported, and when it
        `counts` towards the throttle, True when the address is throttled now."""
        self.metrics.auth_failures.inc()
        self.failures.add(peer, reason)
        if not counts:
            return False
        before = self.throttle.retry_after(peer)
        throttled = self.throttle.failure(peer)
        if throttled and not before:
            logger.warning(
                "throttling %s for %.0f s: %d authentication failures within %.0f s",
                peer,
                throttled,
                self.throttle.failures,
                self.throttle.window_s,
            )
        return throttled > 0

    def _make_room(self) -> bool:
        """Close the oldest connection without a valid key, for one that has one."""
        oldest = self.unverified.oldest()
        if oldest is None:
            return False
        self.unverified.discard(oldest)
        oldest.shut(1008, "too many connections")
        return True

    def _refuse(self, connection: ServerConnection, status: int, text: str) -> Response:
        self.metrics.refused.labels(str(status)).inc()
        return connection.respond(status, text + "\n")


SERVICE_UNAVAILABLE = http.HTTPStatus.SERVICE_UNAVAILABLE
TOO_MANY = http.HTTPStatus.TOO_MANY_REQUESTS


def _keyless(headers: Headers) -> bool:
    try:
        return handshake_key(headers) is None
    except BadHandshakeKey:
        return False


def _response(connection: ServerConnection, body: str, content_type: str) -> Response:
    response = connection.respond(http.HTTPStatus.OK, body)
    response.headers["Content-Type"] = content_type
    return response
