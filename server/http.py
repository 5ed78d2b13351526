"""Plain HTTP on the WebSocket port: /health, /metrics, and the handshake checks."""

import collections
import http
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .auth import KeyTable, key_hash

WS_PATH = "/ws"


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
        self.metrics_appended = Counter(
            "fetchml_metrics_appended", "Metric records written to metrics.bin", registry=r
        )
        self.flush_records = Histogram(
            "fetchml_flush_records",
            "Records per group-commit flush",
            buckets=(1, 10, 100, 1000, 10000, 100000, 1000000),
            registry=r,
        )
        self.flush_seconds = Histogram(
            "fetchml_flush_seconds",
            "Seconds per group-commit flush",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=r,
        )
        self.watchers = Gauge("fetchml_watchers", "Active WATCH_METRICS subscribers", registry=r)
        self.auth_failures = Counter(
            "fetchml_auth_failures", "Rejected keys (handshake and requests)", registry=r
        )

    def on_flush(self, records: int, seconds: float) -> None:
        self.metrics_appended.inc(records)
        self.flush_records.observe(records)
        self.flush_seconds.observe(seconds)


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
    (X-API-Key, Authorization) and the first bytes of frames (key hashes)."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and super().isEnabledFor(level)


def handshake_key(headers: Headers) -> str | None:
    """The raw key of `X-API-Key` or `Authorization: Bearer`, if any."""
    key = headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@dataclass
class Gate:
    """websockets' process_request: routes, limits and the pre-upgrade auth checks."""

    keys: Callable[[], KeyTable]
    metrics: Metrics
    health: Callable[[], dict[str, object]]
    max_connections: int
    open_connections: Callable[[], int]
    audit: Callable[..., None] = lambda *a, **k: None

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        keys = self.keys()
        peer = connection.remote_address[0] if connection.remote_address else None
        if not keys.allows_peer(peer):
            return connection.respond(http.HTTPStatus.FORBIDDEN, "forbidden\n")
        path = request.path.split("?", 1)[0]
        if path == "/health":
            return _response(connection, json.dumps(self.health()) + "\n", "application/json")
        if path == "/metrics":
            return _response(
                connection, generate_latest(self.metrics.registry).decode(), CONTENT_TYPE_LATEST
            )
        if path != WS_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if self.open_connections() >= self.max_connections:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        raw = handshake_key(request.headers)
        if raw is not None and keys.lookup(key_hash(raw)) is None:
            self.metrics.auth_failures.inc()
            self.audit("auth_failure", None, peer=peer, reason="invalid handshake key")
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "invalid API key\n")
        return None


def _response(connection: ServerConnection, body: str, content_type: str) -> Response:
    response = connection.respond(http.HTTPStatus.OK, body)
    response.headers["Content-Type"] = content_type
    return response
