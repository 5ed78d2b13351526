"""Plain HTTP on the WebSocket port: /health, /metrics, and the handshake checks."""

import http
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
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
        self.requests = Counter("fetchml_requests", "Requests by opcode", ["opcode"], registry=r)
        self.errors = Counter(
            "fetchml_request_errors",
            "ERROR responses by opcode and code",
            ["opcode", "code"],
            registry=r,
        )
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
    started: float = field(default_factory=time.monotonic)

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
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "invalid API key\n")
        return None


def _response(connection: ServerConnection, body: str, content_type: str) -> Response:
    response = connection.respond(http.HTTPStatus.OK, body)
    response.headers["Content-Type"] = content_type
    return response
