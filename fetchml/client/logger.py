"""MetricLogger: a synchronous, non-blocking metric sink for training loops.

    with MetricLogger(name="resnet", params={"opt": {"lr": 0.1}}) as ml:
        for step in range(steps):
            ml.log("loss", loss, step=step)
            ml.log_dict({"lr": lr, "acc": acc}, step=step)

Each logger writes one run: a fresh random ID, or `run_id=` / FETCHML_RUN_ID to
resume one (a positional git commit is the old form: the experiment named by
the commit, without a run document). The run's document (name, params, tags,
status...) is sent with UPDATE_RUN: at start, on set_params() / set_tags() /
set_notes(), as a heartbeat every `heartbeat_interval`, and with the final
status ("finished", or "failed" when the `with` block raises) at close.

`log()` only appends the point's four items (name, value, step and the time
of the call) to an in-memory list: no network, no lock, no encoding on the
caller's thread, and no object left per point for the garbage collector to
walk (a tuple per point would set off a collection every 700 points). Only
when the worker falls behind, `Batcher.lag` points waiting (a caller logging
in a tight loop holds the interpreter lock, which the worker then gets back
once per switch interval, 5 ms), does log() encode them itself
(Shipper.catch_up): once per `lag` points, so the worker only sends. A
worker thread with its own event loop (worker.py) runs the shipper
(shipper.py: connect, send, back off), which feeds the batcher (batches.py:
points in, LOG_METRICS messages out, answers in, flush tokens done). `flush()` waits until everything logged so far is
acknowledged or rejected; `close()` flushes and stops the thread, and runs at
exit for loggers still open. A flush that finds nothing in flight and few
points queued sends them itself, on a blocking connection of its own
(Shipper.flush_inline): a script that flushes after every point then pays one
round trip, not two hand-offs between threads on top of it.

Who owns what (C: the caller's thread, W: the worker's):

    state                         written by                read by
    queue of points and tokens    C appends at the end      W (C catching up) takes
                                                            from the front
    Batcher.names                 C, a name's first use     W
    Batcher batches, steps, held  W (C in flush_inline,     C (stats, close)
                                  catch_up)
    Batcher.room                  W per batch (C catching   C, every log()
                                  up); C at close
    Shipper.space (Event)         W per settled batch       C, while log() blocks
    FlushToken.done (a lock)      W                         C, in flush()
    Ledger counts                 W                         C (flush, close, stats)
    Shipper.stop / .abort         C                         W
    Shipper.fatal, .started       W                         C

Per point only plain items cross; typed objects cross once per batch
(room, space) or per call (a FlushToken), so log() stays a dict lookup, a
compare and a list extend. The queue needs no lock: extending it by a
point's items, a copy of its first items, and the deletion of those items
together with the new `held` and `room`, are each one step the interpreter
lock never splits, and only the taker deletes, only what it copied
(Batcher.take). The worker counts a batch's answer in the Ledger
before it can complete a FlushToken, so flush() sees every count. A flush
sending on its own (flush_inline) stands in for the worker: it takes the
Batcher under Shipper.lock, which the worker holds too for everything it does
with the Batcher, and the worker sends nothing until it is done. A log()
catching up takes the waiting points under the lock as its claim, encodes
them without it (nobody takes from the queue meanwhile, so the order holds,
and the worker goes on sending), and batches them under the lock again.

Memory is bounded by `max_buffer` points (queued plus unacknowledged): when
it is full, `log()` blocks until the daemon acknowledges (`on_full="block"`,
the default) or drops the new point (`on_full="drop"`), and says so once.
A point without `step` gets one more than the previous step of that name
(0 for its first point).

Nothing is lost silently. The constructor waits for the start check of the
first connection (startcheck.py): a wrong key, a key that may not write to
the experiment, or a clock far ahead raises there; an unreachable daemon is
not an error (points buffer until it answers). `log()` raises InvalidRequest
for a bad name or step, in the caller's thread, before buffering anything.
`flush()` and `close()` raise MetricsRejected for points the daemon refused
(or whose value cannot be encoded) and DeliveryTimeout when `close_timeout`
runs out; with `on_error="warn"` they log that instead and return False.
"""

import atexit
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from .batches import FlushToken, check_step, encode_name, queued
from .errors import DeliveryTimeout, InvalidRequest
from .ledger import LoggerStats
from .pipeline import MAX_MESSAGE_BYTES
from .runinfo import (
    MAX_NOTES_BYTES,
    check_patch,
    check_tags,
    check_text,
    check_timestamp,
    flatten_params,
    pick_experiment,
    start_patch,
)
from .settings import resolve_settings
from .shipper import Shipper, ShipperConfig
from .worker import Worker

logger = logging.getLogger(__name__)

OnFull = Literal["block", "drop"]
OnError = Literal["raise", "warn"]
_POLL_S = 0.5
"""How often a blocked caller re-checks that the worker thread is alive (it is woken sooner)."""
_START_WAIT_S = 10.0
"""How long the constructor waits for the start check (at most close_timeout)."""
_now = time.time


class MetricLogger:
    def __init__(
        self,
        commit: str | bytes | None = None,
        url: str | None = None,
        api_key: str | None = None,
        *,
        run_id: str | bytes | None = None,
        name: str | None = None,
        project: str = "",
        params: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        notes: str = "",
        heartbeat_interval: float = 30.0,
        max_backoff: float = 2.0,
        batch_size: int = 10_000,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        flush_interval: float = 0.05,
        max_buffer: int = 1_000_000,
        on_full: OnFull = "block",
        on_error: OnError = "raise",
        create_experiment: bool = True,
        job_name: str = "",
        max_in_flight: int = 64,
        close_timeout: float | None = 60.0,
        config_path: Path | None = None,
    ) -> None:
        """`url`/`api_key` default as for Client.connect.

        The run: a positional `commit` logs into that experiment the old way (no run
        document); else `run_id` (40 hex), else FETCHML_RUN_ID, else a fresh random ID
        (`run_id` attribute). A new or resumed run is started with `name`, `project`,
        `params` (flattened with "."), `tags`, `notes`, the git commit of the working
        directory, host, pid and status "running".

        `max_backoff` bounds the wait between reconnection attempts (seconds).
        A batch is cut at `batch_size` points or `max_message_bytes` (the daemon's
        server.max_message_bytes), whichever comes first, and sent within 50 ms; what is
        left goes every `flush_interval` (seconds). `close_timeout` bounds flush(), close(), leaving the `with` and the flush at
        interpreter exit (None: no bound). Raises AuthenticationFailed, PermissionDenied
        or ConfigurationError when the start check fails, InvalidRequest for bad arguments.
        """
        if flush_interval <= 0 or max_buffer < 1 or max_in_flight < 1:
            raise InvalidRequest("flush_interval, max_buffer and max_in_flight must be positive")
        if on_full not in ("block", "drop"):
            raise InvalidRequest(f'on_full must be "block" or "drop", got {on_full!r}')
        if on_error not in ("raise", "warn"):
            raise InvalidRequest(f'on_error must be "raise" or "warn", got {on_error!r}')
        if close_timeout is not None and not close_timeout > 0:
            raise InvalidRequest(f"close_timeout must be positive or None, got {close_timeout}")
        if not heartbeat_interval > 0 or not max_backoff > 0:
            raise InvalidRequest("heartbeat_interval and max_backoff must be positive")
        ident, fresh = pick_experiment(commit, run_id)
        run_patch: dict[str, Any] | None = None
        self._param_keys: set[str] = set()
        if commit is None:
            run_patch = start_patch(name, project, params, tags, notes)
            self._param_keys.update(run_patch.get("params", ()))
            job_name = name or job_name
            create_experiment = True  # resuming a run that does not exist creates it
        elif extra := [k for k, v in (("name", name), ("params", params), ("tags", tags)) if v]:
            raise InvalidRequest(
                f"{', '.join(extra)}: only for a run (a commit has no run document)"
            )
        elif project or notes:
            raise InvalidRequest("project, notes: only for a run (a commit has no run document)")
        settings = resolve_settings(url, api_key, config_path=config_path)
        config = ShipperConfig(
            commit=ident,
            settings=settings,
            batch_size=batch_size,
            max_message_bytes=max_message_bytes,
            flush_interval=flush_interval,
            max_in_flight=max_in_flight,
            create_experiment=create_experiment,
            job_name=job_name,
            run_patch=run_patch,
            fresh=fresh,
            heartbeat_s=heartbeat_interval,
            timeout=close_timeout,
            max_backoff=max_backoff,
        )
        self.commit = self.run_id = config.commit.hex()
        """The experiment's ID (40 hex): the run's, or the commit given."""
        self._is_run = run_patch is not None
        self._queue: list[Any] = []
        self._ship = ship = Shipper(config, self._queue, max_buffer)
        self._ledger = ship.ledger
        self._batcher = ship.batcher
        self._names = ship.batcher.names
        self._max_buffer = max_buffer
        self._on_full = on_full
        self._on_error = on_error
        self._close_timeout = close_timeout
        self._closed = False
        self._result = False
        self._warned = False
        self._dropped = 0
        self._worker = Worker(ship, f"fetchml-logger-{self.commit[:8]}")
        wait = _START_WAIT_S if close_timeout is None else min(_START_WAIT_S, close_timeout)
        ship.started.wait(wait)
        if ship.fatal is not None:
            self._closed = True
            self._worker.join(wait)
            raise ship.fatal
        atexit.register(self._at_exit)

    # -- the caller's side: cheap ----------------------------------------------

    def log(
        self, name: str, value: float, step: int | None = None, *, timestamp: float | None = None
    ) -> None:
        """Record one point, stamped with the time of the call (or `timestamp`, Unix seconds);
        returns at once (unless the buffer is full and on_full="block").

        Raises InvalidRequest for a bad name, step or timestamp (nothing is buffered then).
        """
        queue = self._queue
        try:
            if (
                name in self._names
                and (step is None or 0 <= step <= 0xFFFFFFFF)
                and timestamp is None
                and len(queue) < self._batcher.room
            ):
                queue.extend((name, value, step, _now()))
                return
        except TypeError:  # an unhashable name, or a step that is not a number
            pass
        self._log_slowly(name, value, step, timestamp)

    def log_dict(
        self,
        metrics: Mapping[str, float],
        step: int | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """Record several names at one step and one time (all or none: every name is
        checked first)."""
        for name in metrics:
            self._check_name(name)
        if step is not None:
            step = check_step(step)
        stamp = _now() if timestamp is None else check_timestamp(timestamp)
        log = self.log
        for name, value in metrics.items():
            log(name, value, step, timestamp=stamp)

    # -- the run document ----------------------------------------------------------

    def set_params(self, params: Mapping[str, Any]) -> None:
        """Add or change params (nested mappings flattened with "."); sent in the background,
        delivered before close() returns. InvalidRequest naming the key beyond the limits."""
        flat = flatten_params(params, self._param_keys)
        self._update({"params": flat})
        self._param_keys.update(flat)

    def set_tags(self, tags: Iterable[str]) -> None:
        """Replace the run's tags."""
        self._update({"tags": check_tags(tags)})

    def set_notes(self, notes: str) -> None:
        """Replace the run's notes (at most 4,096 bytes)."""
        self._update({"notes": check_text(notes, "notes", 0, MAX_NOTES_BYTES)})

    def _update(self, patch: dict[str, Any]) -> None:
        if not self._is_run:
            raise InvalidRequest("a logger given a commit has no run document to update")
        self._check_open()
        self._ship.patches.append(check_patch(patch))
        self._worker.nudge()

    # -- slow paths ---------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        try:
            if name not in self._names:
                self._names[name] = encode_name(name)
        except TypeError:
            raise InvalidRequest(f"metric name must be a str, got {name!r}") from None

    def _check_open(self) -> None:
        fatal = self._ship.fatal
        if fatal is not None:
            raise type(fatal)(f"MetricLogger stopped: {fatal.message}", fatal.details, fatal.code)
        if self._closed:
            raise RuntimeError("MetricLogger is closed")
        if not self._worker.alive:
            raise RuntimeError(f"MetricLogger worker stopped: {self._worker.crash!r}")

    def _log_slowly(
        self, name: str, value: float, step: int | None, timestamp: float | None
    ) -> None:
        """log() with a new or bad name, a bad step, a timestamp, or the buffer full."""
        self._check_name(name)
        if step is not None:
            try:
                fits = 0 <= step <= 0xFFFFFFFF
            except TypeError:
                fits = False
            if not fits:
                check_step(step)  # raises
        stamp = _now() if timestamp is None else check_timestamp(timestamp)
        if len(self._queue) >= self._batcher.room:
            if not self._batcher.full:
                self._ship.catch_up()
            elif not self._full():
                return
        self._queue.extend((name, value, step, stamp))

    def _full(self) -> bool:
        """The buffer is full (or the logger stopped): block, drop, or raise. True to append."""
        self._check_open()
        drop = self._on_full == "drop"
        if not self._warned:
            self._warned = True
            what = "dropping new points" if drop else "log() blocks until the daemon acknowledges"
            message = (
                f"MetricLogger buffer full ({self._max_buffer} points not yet acknowledged): {what}"
            )
            logger.warning("%s", message)
            if drop:
                warnings.warn(message, RuntimeWarning, stacklevel=3)
        if drop:
            self._dropped += 1
            return False
        self._worker.nudge()
        batcher, space = self._batcher, self._ship.space
        while batcher.full:
            self._check_open()
            space.clear()
            if not batcher.full:
                break
            space.wait(_POLL_S)
        return True

    # -- flush and close -------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every point logged so far is acknowledged or rejected; True if all were
        acknowledged. `timeout` defaults to close_timeout. Raises MetricsRejected for points
        rejected since the last report, DeliveryTimeout when time runs out (on_error="raise").
        """
        limit = self._close_timeout if timeout is None else timeout
        in_time = True
        if self._worker.alive:
            # sent from this thread when it can be (its connection waits up to close_timeout)
            if limit == self._close_timeout and self._ship.flush_inline():
                return self._report(True, limit)
            token = FlushToken()
            self._queue.extend(queued(token))
            self._worker.nudge()
            deadline = None if limit is None else time.monotonic() + limit
            while not token.done.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    in_time = False
                    break
                if not self._worker.alive:
                    break
                token.done.wait(_POLL_S if left is None else min(left, _POLL_S))
        return self._report(in_time, limit)

    def close(self, timeout: float | None = None) -> bool:
        """Flush, send the run's status "finished", then stop the worker; True if everything
        logged was acknowledged.

        `timeout` defaults to close_timeout. Raises like flush(); a second close() returns
        the first one's result.
        """
        return self._close(timeout, "finished")

    def _close(self, timeout: float | None, status: str) -> bool:
        if self._closed:
            return self._result
        limit = self._close_timeout if timeout is None else timeout
        if self._is_run and self._ship.fatal is None:
            self._ship.patches.append({"status": status})
        self._closed = True
        self._batcher.stop()  # every further log() takes the slow path, which raises
        atexit.unregister(self._at_exit)
        self._ship.stop = True
        self._worker.nudge()
        in_time = self._worker.join(limit)
        if not in_time:
            self._worker.abort()
        self._batcher.stop()  # again: the worker may have set room meanwhile
        self._ship.close_inline()
        self._result = self._report(in_time, limit)
        return self._result

    def _undelivered(self) -> int:
        return self._batcher.held + self._batcher.queued_points()

    def _report(self, in_time: bool, limit: float | None) -> bool:
        """Raise (or, with on_error="warn", log) what went wrong since the last report."""
        fatal = self._ship.fatal
        if fatal is not None and not self._worker.alive and (late := self._undelivered()):
            self._batcher.drop_all()  # points logged while the worker was stopping
            self._ledger.reject(late, str(fatal), fatal.code)
        rejected = self._ledger.unreported()
        error: Exception | None = rejected
        if not in_time:
            assert limit is not None
            error = DeliveryTimeout(self._undelivered(), limit, self._ledger.last_error, rejected)
        elif self._worker.crash is not None:
            error = RuntimeError(f"MetricLogger worker crashed: {self._worker.crash!r}")
        if error is None:
            return True
        if self._on_error == "raise":
            raise error
        logger.warning("MetricLogger %s: %s", self.commit[:12], error)
        return False

    def _at_exit(self) -> None:
        crashed = getattr(sys, "last_value", None) is not None  # an uncaught exception
        try:
            self._close(None, "failed" if crashed else "finished")
        except Exception as exc:
            logger.error("MetricLogger %s at exit: %s", self.commit[:12], exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the block's own exception goes on; what close() says is logged
            self._close(None, "failed")
        except Exception as problem:
            logger.error("MetricLogger %s: %s", self.commit[:12], problem)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def acknowledged(self) -> int:
        """Points the daemon has acknowledged so far."""
        return self._ledger.acknowledged

    def stats(self) -> LoggerStats:
        return self._ledger.stats(self._batcher.waiting + self._batcher.held, self._dropped)
