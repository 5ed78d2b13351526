"""MetricLogger: a synchronous, non-blocking metric sink for training loops.

    with MetricLogger(commit) as ml:
        for step in range(steps):
            ml.log("loss", loss, step=step)
            ml.log_dict({"lr": lr, "acc": acc}, step=step)

`log()` only appends a tuple to an in-memory deque: no network, no lock, no
encoding on the caller's thread. A background thread with its own event loop
(see shipper.py) batches the points into pipelined LOG_METRICS requests,
reconnects with backoff after a drop or a daemon restart, and resends every
batch that was not acknowledged. `flush()` waits until everything logged so
far is acknowledged; `close()` flushes and stops the thread, and runs at exit
for loggers still open.

Memory is bounded by `max_buffer` points (queued plus unacknowledged): when
it is full, `log()` blocks until the daemon acknowledges (`on_full="block"`,
the default) or drops the new point (`on_full="drop"`), and says so once.
A point without `step` gets one more than the previous step of that name
(0 for its first point).
"""

import asyncio
import atexit
import contextlib
import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from .errors import FetchmlError, InvalidRequest
from .models import parse_commit
from .settings import resolve_settings
from .shipper import FlushMarker, Shipper, ShipperConfig

logger = logging.getLogger(__name__)

OnFull = Literal["block", "drop"]
_POLL_S = 0.5
"""How often a blocked caller re-checks that the worker thread is alive (it is woken sooner)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggerStats:
    buffered: int
    """Points logged and not yet acknowledged (queued or in flight)."""
    acknowledged: int
    dropped: int
    """Points dropped because the buffer was full (on_full="drop")."""
    rejected: int
    """Points refused: invalid name, step or value, or rejected by the server."""
    resent_batches: int
    reconnects: int
    last_error: FetchmlError | None


class MetricLogger:
    def __init__(
        self,
        commit: str | bytes,
        url: str | None = None,
        api_key: str | None = None,
        *,
        batch_size: int = 1000,
        flush_interval: float = 0.05,
        max_buffer: int = 1_000_000,
        on_full: OnFull = "block",
        create_experiment: bool = True,
        job_name: str = "",
        max_in_flight: int = 64,
        close_timeout: float | None = 60.0,
        config_path: Path | None = None,
    ) -> None:
        """`url`/`api_key` default as for Client.connect. `close_timeout` bounds the flush at exit."""
        if not 1 <= batch_size <= 0xFFFF:
            raise InvalidRequest(f"batch_size must be 1..65535, got {batch_size}")
        if flush_interval <= 0 or max_buffer < 1 or max_in_flight < 1:
            raise InvalidRequest("flush_interval, max_buffer and max_in_flight must be positive")
        if on_full not in ("block", "drop"):
            raise InvalidRequest(f'on_full must be "block" or "drop", got {on_full!r}')
        settings = resolve_settings(url, api_key, config_path=config_path)
        config = ShipperConfig(
            commit=parse_commit(commit),
            settings=settings,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_in_flight=max_in_flight,
            create_experiment=create_experiment,
            job_name=job_name,
        )
        self.commit = config.commit.hex()
        self._queue: deque[Any] = deque()
        self._ship = Shipper(config, self._queue)
        self._limit = max_buffer
        self._max_buffer = max_buffer
        self._batch_size = batch_size
        self._nudge_at = batch_size - 1
        self._on_full = on_full
        self._close_timeout = close_timeout
        self._closed = False
        self._warned = False
        self._dropped = 0
        self._crash: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, name=f"fetchml-logger-{self.commit[:8]}", daemon=True
        )
        self._thread.start()
        atexit.register(self._at_exit)

    # -- the caller's side: cheap ----------------------------------------------

    def log(self, name: str, value: float, step: int | None = None) -> None:
        """Record one point; returns at once (unless the buffer is full and on_full="block")."""
        queue = self._queue
        n = len(queue)
        if n + self._ship.held >= self._limit and not self._full():
            return
        queue.append((name, value, step))
        if n % self._batch_size == self._nudge_at:
            self._nudge()

    def log_dict(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record several names at one step."""
        log = self.log
        for name, value in metrics.items():
            log(name, value, step)

    # -- slow paths ---------------------------------------------------------------

    def _nudge(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker has stopped
            self._loop.call_soon_threadsafe(self._ship.wake)

    def _full(self) -> bool:
        """The buffer is full (or the logger closed): block, drop, or raise. True to append."""
        if self._closed:
            raise RuntimeError("MetricLogger is closed")
        if self._on_full == "drop":
            self._dropped += 1
            if not self._warned:
                self._warned = True
                message = (
                    f"MetricLogger buffer full ({self._max_buffer} points not yet acknowledged): "
                    "dropping new points"
                )
                logger.warning("%s", message)
                warnings.warn(message, RuntimeWarning, stacklevel=3)
            return False
        if not self._warned:
            self._warned = True
            logger.warning(
                "MetricLogger buffer full (%d points not yet acknowledged): log() blocks "
                "until the daemon acknowledges",
                self._max_buffer,
            )
        self._nudge()
        ship = self._ship
        while len(self._queue) + ship.held >= self._limit:
            if self._closed:
                raise RuntimeError("MetricLogger is closed")
            self._check_worker()
            ship.space.clear()
            if len(self._queue) + ship.held < self._limit:
                break
            ship.space.wait(_POLL_S)
        return True

    def _check_worker(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError(f"MetricLogger worker stopped: {self._crash!r}")

    # -- flush and close -------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every point logged so far is acknowledged (or rejected). False on timeout."""
        if not self._thread.is_alive():
            return not self._queue and self._ship.held == 0
        marker = FlushMarker()
        self._queue.append(marker)
        self._nudge()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return marker.done.is_set()
            if marker.done.wait(_POLL_S if left is None else min(left, _POLL_S)):
                return True
            self._check_worker()

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the worker. True if everything logged was acknowledged."""
        if self._closed:
            self._thread.join(timeout)
            return not self._thread.is_alive() and self._ship.held == 0
        self._closed = True
        self._limit = -1  # every further log() takes the slow path, which raises
        atexit.unregister(self._at_exit)
        self._ship.stop = True
        self._nudge()
        self._thread.join(timeout)
        if self._thread.is_alive():
            left = len(self._queue) + self._ship.held
            logger.error(
                "MetricLogger %s: close timed out with %d points not acknowledged; giving up",
                self.commit[:12],
                left,
            )
            self._ship.abort = True
            self._nudge()
            self._thread.join(_POLL_S * 4)
            return False
        return self._crash is None and self._ship.idle

    def _at_exit(self) -> None:
        self.close(self._close_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def acknowledged(self) -> int:
        """Points the daemon has acknowledged so far."""
        return self._ship.acknowledged

    def stats(self) -> LoggerStats:
        ship = self._ship
        return LoggerStats(
            buffered=len(self._queue) + ship.held,
            acknowledged=ship.acknowledged,
            dropped=self._dropped,
            rejected=ship.rejected,
            resent_batches=ship.resent_batches,
            reconnects=ship.reconnects,
            last_error=ship.last_error,
        )

    # -- the worker thread -------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._ship.run())
        except BaseException as exc:
            self._crash = exc
            logger.exception("MetricLogger %s: worker crashed", self.commit[:12])
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._ship.space.set()
