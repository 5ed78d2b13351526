"""Build the parts, serve, handle signals, tell systemd, drain on shutdown."""

import contextlib
import json
import logging
import math
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.server import ServerConnection, serve

from .. import __version__
from ..frames import TakingServerConnection
from . import freshness
from .audit import AuditLog
from .auth import KeyTable, RateLimiter
from .cluster import ClusterLink, NodeNameTaken
from .config import Config, ConfigError, config_warnings, load_config
from .connection import Connection
from .errors import ServerError
from .fanout import Fanout
from .files import DataDirBusy, list_commits, lock_data_dir
from .handlers import Context
from .health import CachedCount
from .http import Gate, Metrics, QuietLogger, select_subprotocol
from .jobs import JobQueue
from .jobs_sqlite import SqliteJobQueue
from .sharedlimits import SharedRateLimiter, SharedThrottle
from .storage import ExperimentStore
from .systemd import Notifier
from .watch import WatchHub

logger = logging.getLogger(__name__)


class App:
    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.keys = KeyTable(config.auth)
        self.metrics = Metrics()
        self.hub = WatchHub()
        self.connections: set[Connection] = set()
        self.started = time.monotonic()
        self.port = 0
        self.stop_requested = anyio.Event()
        self.notifier = Notifier()
        self.ctx: Context | None = None
        self.fanout: Fanout | None = None
        """Cluster mode: the fan-out over Redis; `fanout.up` is False while Redis is away."""
        self.experiment_count = CachedCount(lambda: len(list_commits(config.storage.base_path)))
        self.gate: Gate | None = None
        self.drained = anyio.Event()
        """Set when the last connection has ended after stop_requested."""
        self.link: ClusterLink | None = None
        """Cluster mode: this node's link to Redis."""

    def health(self) -> dict[str, object]:
        """O(1): the experiment count is cached; "degraded" while the data directory
        cannot be listed (the count is then the last one that could be made) or the
        cluster's Redis does not answer or the fan-out is not subscribed (the nodes are
        those of the last heartbeat)."""
        experiments = self.experiment_count.get()
        link = self.link
        fanout = self.fanout
        ok = self.experiment_count.ok and (link is None or link.up)
        ok = ok and (fanout is None or fanout.up)
        return {
            "status": "ok" if ok else "degraded",
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "experiments": experiments,
            "connections": len(self.connections),
            "watchers": len(self.hub),
            "node": link.name if link else None,
            "nodes": list(link.live) if link else [],
        }

    def reload(self) -> None:
        """SIGHUP: re-read the auth section (keys, roles, whitelist); keep the rest."""
        self.notifier.reloading()
        try:
            if self.config_path is None:
                raise ConfigError("no config file to reload")
            fresh = load_config(self.config_path)
            self.keys = KeyTable(fresh.auth)
            logger.info("reloaded auth: %d keys", len(fresh.auth.api_keys))
            self._revoke()
        except ConfigError as exc:
            logger.error("reload failed, keeping the current keys: %s", exc)
        self.notifier.ready()

    def _revoke(self) -> None:
        """Close the connections the new keys no longer admit (1008, with the reason)."""
        assert self.ctx is not None
        store = self.ctx.store

        def owner_of(commit: str) -> str | None:
            try:
                meta = store.metadata(commit)
            except ServerError:  # pruned meanwhile: its watchers are closed anyway
                return None
            return meta.user if meta else None

        closed = 0
        for conn in list(self.connections):
            why = conn.revoked(self.keys, owner_of)
            if why:
                conn.shut(1008, why)
                closed += 1
        if closed:
            logger.info("closed %d connections the reloaded auth section no longer admits", closed)

    async def _handle(self, ws: ServerConnection) -> None:
        assert self.ctx is not None and self.gate is not None
        conn = Connection(ws, self.ctx, lambda: self.keys, self.metrics, self.gate)
        self.connections.add(conn)
        if conn.bound is None:
            self.gate.unverified.add(conn, conn.peer, time.monotonic())
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        try:
            await conn.serve()
        finally:
            self.connections.discard(conn)
            self.gate.unverified.discard(conn)
            self.metrics.connections.dec()
            if not self.connections and self.stop_requested.is_set():
                self.drained.set()

    async def _sweep(self, gate: Gate, tg: TaskGroup) -> None:
        """Close connections that showed no valid key within auth_timeout_s; ping those
        silent for ping_interval_s (a connection that sends requests is known to be alive,
        so idle workers' claims cost no pings); report the authentication failures whose
        minute is over."""
        s = self.config.server
        timeout, interval = s.auth_timeout_s, s.ping_interval_s
        while True:
            await anyio.sleep(min(1.0, timeout / 4, interval / 4 or 1.0))
            now = time.monotonic()
            for conn in gate.unverified.expired(now, timeout):
                gate.unverified.discard(conn)
                conn.shut(1008, "authentication timeout")
            if interval:
                for conn in self.connections:
                    if conn.needs_ping(now, interval):
                        tg.start_soon(conn.ping, s.ping_timeout_s or math.inf)
            gate.failures.flush()

    def _ssl(self) -> ssl.SSLContext | None:
        tls = self.config.server.tls
        if not tls.enabled:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    async def run(
        self, on_ready: Callable[[int], None] | None = None, handle_signals: bool = True
    ) -> None:
        cfg = self.config
        lock = lock_data_dir(cfg.storage.base_path, shared=cfg.cluster.enabled)
        limiter = RateLimiter(cfg.rate_limit.control_requests_per_minute)
        if cfg.cluster.enabled:
            self.link = link = ClusterLink(cfg.cluster)
            self.metrics.cluster_nodes.set_function(lambda: len(link.live))
            self.metrics.redis_up.set_function(lambda: float(link.up))
            limiter = SharedRateLimiter(limiter.per_minute, self.link)
        log = cfg.logging
        audit = AuditLog(
            log.audit_file,
            log.audit_max_bytes,
            log.audit_keep,
            on_error=self.metrics.audit_write_errors.inc,
        )
        try:
            async with ExperimentStore(
                cfg.storage.base_path,
                durability="fsync" if cfg.storage.durability == "fsync" else "write",
                max_open_files=cfg.storage.max_open_files,
                cache_bytes=cfg.storage.cache_bytes,
                index_bytes=cfg.storage.index_bytes,
                shared=cfg.cluster.enabled,
            ) as store:
                jobs = await open_queue(cfg)
                try:
                    self.ctx = Context(
                        cfg,
                        store,
                        jobs,
                        self.hub,
                        limiter,
                        audit,
                    )
                    store.hooks.append(self.hub.on_commit)
                    if cfg.cluster.enabled:
                        self.fanout = self.ctx.fanout = Fanout(cfg.cluster, store, self.hub)
                        store.hooks.append(self.fanout.on_commit)
                    store.flush_hooks.append(self.metrics.on_flush)
                    await self._serve(on_ready, handle_signals)
                finally:
                    await jobs.close()
        finally:
            audit.close()
            os.close(lock)
        logger.info("stopped")

    async def _serve(self, on_ready: Callable[[int], None] | None, handle_signals: bool) -> None:
        s = self.config.server
        self.gate = gate = Gate(
            keys=lambda: self.keys,
            metrics=self.metrics,
            health=self.health,
            max_connections=s.max_connections,
            open_connections=lambda: len(self.connections),
            audit=self.ctx.audit if self.ctx else lambda *a, **k: None,
            max_per_ip=s.max_connections_per_ip,
        )
        shared = SharedThrottle(self.link) if self.link else None
        if shared is not None:
            gate.throttle = shared
        async with (
            serve(
                self._handle,
                s.host,
                s.port,
                process_request=gate.shared if self.link else gate,
                create_connection=TakingServerConnection,
                select_subprotocol=select_subprotocol,
                max_size=s.max_message_bytes,
                compression="deflate" if s.compression else None,
                open_timeout=s.open_timeout_s,
                ping_interval=None,  # _sweep pings the connections that fell silent
                ssl=self._ssl(),
                server_header=f"fetchml/{__version__}",
                logger=QuietLogger(logging.getLogger("websockets.server")),
            ) as server,
            self._registered(server.sockets[0].getsockname()[1]),
            anyio.create_task_group() as tg,
        ):
            self.port = server.sockets[0].getsockname()[1]
            scheme = "wss" if s.tls.enabled else "ws"
            if handle_signals:
                await tg.start(self._signals)
            tg.start_soon(self.notifier.watchdog_loop)
            tg.start_soon(self._sweep, gate, tg)
            if shared is not None:
                tg.start_soon(shared.link.run)
                tg.start_soon(shared.run)
            if self.fanout is not None and self.link is not None:
                tg.start_soon(self.fanout.run, self.link.name)
            if self.ctx is not None:
                tg.start_soon(freshness.follow, self.ctx.store, self.hub)
            logger.info("listening on %s://%s:%d/ws", scheme, s.host, self.port)
            self.notifier.ready(f"listening on port {self.port}")
            if on_ready:
                on_ready(self.port)
            await self.stop_requested.wait()
            self.notifier.stopping()
            logger.info("shutting down: finishing in-flight requests")
            server.close(close_connections=False)
            with anyio.move_on_after(s.shutdown_timeout_s) as scope:
                for conn in list(self.connections):
                    conn.stop()
                if self.connections:
                    await self.drained.wait()  # set as the last connection ends
            if scope.cancelled_caught:
                logger.warning("shutdown timeout: aborting %d connections", len(self.connections))
                for conn in list(self.connections):
                    conn.ws.transport.abort()  # a peer that stopped reading would hold us
            tg.cancel_scope.cancel()
            gate.failures.flush(force=True)

    def _registered(self, port: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Cluster mode: this node registered in Redis while it serves."""
        return self.link.serving(port) if self.link else contextlib.nullcontext()

    async def _signals(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    logger.info("received %s", signal.Signals(signum).name)
                    self.stop_requested.set()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):  # journald adds its own timestamps
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets' debug log prints handshake headers, X-API-Key included: never below INFO.
    logging.getLogger("websockets").setLevel(max(logging.INFO, root.level))


async def open_queue(config: Config) -> JobQueue:
    """The cluster's Redis queue when `cluster.redis_url` is set, else the SQLite file."""
    if config.cluster.enabled:
        from .jobs_redis import RedisJobQueue  # redis is needed in cluster mode only

        cluster = config.cluster
        return await RedisJobQueue.open(
            cluster.redis_url, cluster.key_prefix, config.jobs.keep_days, config.jobs.lease_s
        )
    return await SqliteJobQueue.open(
        config.storage.jobs_db, config.jobs.keep_days, config.jobs.lease_s
    )


def run(config_path: Path) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"{config_path}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level, config.logging.format)
    for warning in config_warnings(config):
        logger.warning("%s: %s", config_path, warning)
    try:
        anyio.run(App(config, config_path).run)
    except DataDirBusy as exc:
        logger.error("%s", exc)
        return 1
    except NodeNameTaken as exc:
        logger.error("%s", exc)
        return 1
    return 0
